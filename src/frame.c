/* frame.c: the executor protocol's frames (docker/flyexec_proto.h defines
 * its numbers and limits for both ends, docker/flyexec.c documents the
 * payloads; ARCHITECTURE.md summarises it).
 *
 *   u32 len (bytes after it: type + id + payload), u8 type, u32 id, payload
 *
 * Integers are big-endian.  Everything that arrives here came from the
 * sandbox: a length is checked against the caller's bound before anything
 * is sized from it, and a frame is only ever looked at in place. */
#include "fly.h"

#include <string.h>

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

uint32_t fly_frame_get32(const void *p) {
  const unsigned char *b = p;
  return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
         ((uint32_t)b[2] << 8) | (uint32_t)b[3];
}

int fly_frame_parse(const void *buf, size_t len, size_t max_payload,
                    fly_frame_t *f) {
  const unsigned char *b = buf;
  uint32_t n;

  if (len < 4)
    return 0;
  n = fly_frame_get32(b);
  /* Checked before waiting for more: a lie about the length is refused as
   * soon as the length is in, never buffered up to. */
  if (n < 5 || (size_t)(n - 5) > max_payload)
    return -1;
  if (len < 4 + (size_t)n)
    return 0;
  f->type = b[4];
  f->id = fly_frame_get32(b + 5);
  f->data = b + FLY_FRAME_HDR;
  f->len = (size_t)n - 5;
  return (int)(4 + n);
}

int fly_frame_put(fly_buf_t *b, int type, uint32_t id, const void *data,
                  size_t len) {
  unsigned char *p;

  if (len > FLY_FRAME_MAX || fly_buf_reserve(b, FLY_FRAME_HDR + len) != 0)
    return -1;
  p = (unsigned char *)b->base + b->len;
  put32(p, (uint32_t)(5 + len));
  p[4] = (unsigned char)type;
  put32(p + 5, id);
  if (len > 0)
    memcpy(p + FLY_FRAME_HDR, data, len);
  b->len += FLY_FRAME_HDR + len;
  b->base[b->len] = '\0';
  return 0;
}

static int put_u32(fly_buf_t *b, uint32_t v) {
  unsigned char p[4];
  put32(p, v);
  return fly_buf_append(b, p, 4);
}

static int put_str(fly_buf_t *b, const char *s) {
  size_t n = s != NULL ? strlen(s) : 0;
  if (n > UINT32_MAX || put_u32(b, (uint32_t)n) != 0)
    return -1;
  return fly_buf_append(b, s, n);
}

int fly_frame_start_payload(fly_buf_t *b, const fly_cmd_t *cmd) {
  unsigned char flags = 0;
  size_t i;
  uint64_t t = cmd->timeout_ms;

  if (cmd->command != NULL)
    flags |= FLY_START_SHELL;
  if (cmd->background)
    flags |= FLY_START_BACKGROUND;
  if (t > UINT32_MAX)
    t = UINT32_MAX;
  if (fly_buf_append(b, &flags, 1) != 0 || put_u32(b, (uint32_t)t) != 0 ||
      put_str(b, cmd->cwd) != 0 || put_u32(b, (uint32_t)cmd->envc) != 0)
    return -1;
  for (i = 0; i < cmd->envc; i++)
    if (put_str(b, cmd->env_names[i]) != 0 ||
        put_str(b, cmd->env_values[i]) != 0)
      return -1;
  if (cmd->command != NULL)
    return put_u32(b, 1) != 0 || put_str(b, cmd->command) != 0 ? -1 : 0;
  if (put_u32(b, (uint32_t)cmd->argc) != 0)
    return -1;
  for (i = 0; i < cmd->argc; i++)
    if (put_str(b, cmd->argv[i]) != 0)
      return -1;
  return 0;
}
