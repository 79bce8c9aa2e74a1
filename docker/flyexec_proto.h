/* flyexec_proto.h: the executor's wire protocol, written once for both ends:
 * docker/flyexec.c (the executor in the sandbox) and src/frame.c,
 * src/executor.c (the client).  It lives in docker/ because the image is
 * built from that directory alone (docker build docker/; fly-local's image
 * builder compiles flyexec.c there too), and the addon's build and the C
 * tests add docker/ to their include path.  flyexec.c documents the frames'
 * payloads; ARCHITECTURE.md ("The executor") summarises them.
 *
 *   u32 len     bytes after this field (type + id + payload), 5..5+max
 *   u8  type
 *   u32 id      the command, chosen by the client; 0 for HELLO
 *   payload     len - 5 bytes
 *
 * Integers are big-endian.  Plain C (no libc beyond integers): flyexec is
 * built static with nothing else. */
#ifndef FLYEXEC_PROTO_H
#define FLYEXEC_PROTO_H

/* HELLO's payload: this magic, u32 version, u32 max payload. */
#define FLY_EXEC_MAGIC "flyexec\n"
#define FLY_EXEC_MAGIC_LEN 8
#define FLY_EXEC_VERSION 1
#define FLY_EXEC_HELLO_LEN 16

#define FLY_FRAME_HDR 9          /* u32 len, u8 type, u32 id */
#define FLY_FRAME_MAX (1u << 20) /* the largest payload either way */
/* stdin sent and not yet acknowledged (ACK) per command: the executor
 * buffers at most this. */
#define FLY_EXEC_STDIN_WINDOW (1u << 20)

enum {
  /* client -> flyexec */
  FLY_FRAME_START = 1, FLY_FRAME_STDIN = 2, FLY_FRAME_EOF = 3,
  FLY_FRAME_KILL = 4,
  /* flyexec -> client */
  FLY_FRAME_HELLO = 0x81, FLY_FRAME_STDOUT = 0x82, FLY_FRAME_STDERR = 0x83,
  FLY_FRAME_EXIT = 0x84, FLY_FRAME_FAILED = 0x85, FLY_FRAME_ACK = 0x86,
  FLY_FRAME_RUNNING = 0x87
};
/* START flags (the payload's first byte). */
enum { FLY_START_SHELL = 1, FLY_START_BACKGROUND = 2, FLY_START_STDIN = 4 };

#endif
