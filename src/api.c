/* api.c: the Fly Machines REST API over libcurl, on the I/O thread.
 *
 * Each JS call names an operation of the table below; the path is built here
 * (every segment URL-escaped), the request runs on the loop's CURLM (so
 * keep-alive connections are reused across calls), and the reply is parsed
 * with cJSON here and turned into plain JS values in call_js.
 *
 * Retries: 408, 429, 5xx and connection failures are retried for
 * idempotent operations, with exponential backoff and jitter (a longer
 * Retry-After wins), never sooner than a floor, inside a total time bound.  A create is never blindly retried: it is
 * repeated only when it provably never reached the server (connect failed)
 * or was refused unprocessed (429), and after an ambiguous failure the
 * machine is first looked up by the client-generated id in its metadata. */
#include "fly.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
  POLICY_IDEMPOTENT, /* retry on every transient failure */
  POLICY_ONCE,       /* retry only what provably was not processed */
  POLICY_CREATE,     /* ONCE, plus a look-up after an ambiguous failure */
  POLICY_WAIT        /* IDEMPOTENT, and loop on 408 until the wait bound */
};

/* Retry-After beyond a day is read as a day (it only has to exceed any
 * total bound); replies beyond FLY_API_MAX_REPLY are refused. */
#define FLY_API_RETRY_AFTER_MAX_S 86400

/* No attempt follows another sooner than this, whatever the server says
 * (Retry-After: 0) or the caller configured (baseMs: 0): Fly rate-limits
 * per action per machine at about 1/s, and a storm of instant replies must
 * not become a storm of requests.  A long poll that comes back 408 sooner
 * than FLY_API_WAIT_MIN_MS was no long poll: it is backed off too. */
#define FLY_API_RETRY_FLOOR_MS 100
#define FLY_API_WAIT_MIN_MS 1000
#define FLY_API_MAX_REPLY ((size_t)64 << 20)

typedef struct fly_api_op_s {
  const char *name;
  const char *method;
  const char *path;
  int policy;
} fly_api_op_t;

static const fly_api_op_t api_ops[] = {
  {"regions", "GET", "/v1/platform/regions", POLICY_IDEMPOTENT},
  {"app.list", "GET", "/v1/apps", POLICY_IDEMPOTENT},
  /* A replayed app create answers 422 "name taken", which callers treat as
   * "exists", so retrying it is safe. */
  {"app.create", "POST", "/v1/apps", POLICY_IDEMPOTENT},
  {"app.get", "GET", "/v1/apps/{app}", POLICY_IDEMPOTENT},
  {"app.delete", "DELETE", "/v1/apps/{app}", POLICY_IDEMPOTENT},
  /* The app's public addresses (the edge path, lib/edge.js).  A create is
   * sent once: a replay could allocate a second address. */
  {"app.ips.list", "GET", "/v1/apps/{app}/ip_assignments", POLICY_IDEMPOTENT},
  {"app.ips.create", "POST", "/v1/apps/{app}/ip_assignments", POLICY_ONCE},
  {"machine.list", "GET", "/v1/apps/{app}/machines", POLICY_IDEMPOTENT},
  {"machine.create", "POST", "/v1/apps/{app}/machines", POLICY_CREATE},
  {"machine.get", "GET", "/v1/apps/{app}/machines/{machine}",
   POLICY_IDEMPOTENT},
  {"machine.update", "POST", "/v1/apps/{app}/machines/{machine}",
   POLICY_ONCE},
  {"machine.delete", "DELETE", "/v1/apps/{app}/machines/{machine}",
   POLICY_IDEMPOTENT},
  {"machine.start", "POST", "/v1/apps/{app}/machines/{machine}/start",
   POLICY_IDEMPOTENT},
  {"machine.stop", "POST", "/v1/apps/{app}/machines/{machine}/stop",
   POLICY_IDEMPOTENT},
  {"machine.suspend", "POST", "/v1/apps/{app}/machines/{machine}/suspend",
   POLICY_IDEMPOTENT},
  {"machine.restart", "POST", "/v1/apps/{app}/machines/{machine}/restart",
   POLICY_IDEMPOTENT},
  {"machine.signal", "POST", "/v1/apps/{app}/machines/{machine}/signal",
   POLICY_IDEMPOTENT},
  {"machine.wait", "GET", "/v1/apps/{app}/machines/{machine}/wait",
   POLICY_WAIT},
  {"machine.exec", "POST", "/v1/apps/{app}/machines/{machine}/exec",
   POLICY_ONCE},
  {"machine.events", "GET", "/v1/apps/{app}/machines/{machine}/events",
   POLICY_IDEMPOTENT},
  {"machine.metadata.get", "GET",
   "/v1/apps/{app}/machines/{machine}/metadata", POLICY_IDEMPOTENT},
  /* PATCH merges: keys not named stay, null or "" removes one.  Sending
   * the same merge twice leaves the same metadata. */
  {"machine.metadata.update", "PATCH",
   "/v1/apps/{app}/machines/{machine}/metadata", POLICY_IDEMPOTENT},
  {"machine.metadata.set", "POST",
   "/v1/apps/{app}/machines/{machine}/metadata/{key}", POLICY_IDEMPOTENT},
  {"machine.metadata.delete", "DELETE",
   "/v1/apps/{app}/machines/{machine}/metadata/{key}", POLICY_IDEMPOTENT},
  {"machine.lease.get", "GET", "/v1/apps/{app}/machines/{machine}/lease",
   POLICY_IDEMPOTENT},
  /* A replayed acquire that had taken the lease answers 409 (held, by a
   * nonce the caller never saw), which callers treat as "taken": the lease
   * lapses at its TTL.  So retrying it is safe, and it may reuse a
   * keep-alive connection (a fresh TLS connection per claim is a round
   * trip more on Fly). */
  {"machine.lease.acquire", "POST",
   "/v1/apps/{app}/machines/{machine}/lease", POLICY_IDEMPOTENT},
  {"machine.lease.release", "DELETE",
   "/v1/apps/{app}/machines/{machine}/lease", POLICY_IDEMPOTENT},
  {"volume.list", "GET", "/v1/apps/{app}/volumes", POLICY_IDEMPOTENT},
  /* Every volume of an org, deleted ones with include_deleted: how the
   * snapshots of a destroyed sandbox are found again. */
  {"volume.org_list", "GET", "/v1/orgs/{org}/volumes", POLICY_IDEMPOTENT},
  /* A replayed create would make a second volume: only what provably was
   * not processed is repeated (the caller looks up by name after an
   * ambiguous failure). */
  {"volume.create", "POST", "/v1/apps/{app}/volumes", POLICY_ONCE},
  {"volume.get", "GET", "/v1/apps/{app}/volumes/{volume}", POLICY_IDEMPOTENT},
  {"volume.update", "PUT", "/v1/apps/{app}/volumes/{volume}",
   POLICY_IDEMPOTENT},
  {"volume.delete", "DELETE", "/v1/apps/{app}/volumes/{volume}",
   POLICY_IDEMPOTENT},
  /* Extending by a size is absolute (size_gb), so a replay is harmless. */
  {"volume.extend", "PUT", "/v1/apps/{app}/volumes/{volume}/extend",
   POLICY_IDEMPOTENT},
  {"volume.snapshots", "GET", "/v1/apps/{app}/volumes/{volume}/snapshots",
   POLICY_IDEMPOTENT},
  {"volume.snapshot_create", "POST",
   "/v1/apps/{app}/volumes/{volume}/snapshots", POLICY_ONCE},
};

typedef struct fly_api_s fly_api_t;

struct fly_api_s {
  fly_req_t req; /* first: the loop sees a fly_req_t */

  /* Set on the JS thread, read-only after. */
  const fly_api_op_t *op;
  char *path;          /* escaped path and query, for messages */
  char *url;
  char *lookup_url;    /* create: find the machine by its create id */
  char *create_id;     /* create: the id in its metadata, and the key */
  char *create_key;
  char *body;
  size_t body_len;
  struct curl_slist *headers;
  uint64_t attempt_timeout_ms, total_ms, base_ms, max_ms, wait_total_ms;

  /* I/O thread. */
  uint64_t started_at, due_at, attempt_at;
  int attempts;
  int lookup;          /* the current transfer is the create look-up */
  CURL *easy;
  fly_buf_t resp;
  char *request_id;
  int64_t retry_after_ms;
  int too_large;       /* the reply passed FLY_API_MAX_REPLY */
  char errbuf[CURL_ERROR_SIZE];
  fly_api_t *list_next; /* in the active or the timer list */

  /* The result, read by call_js. */
  long status;
  cJSON *json;
};

typedef struct fly_api_state_s {
  fly_api_t *active;   /* transfers on the multi handle */
  fly_api_t *timers;   /* waiting for their backoff */
  uint64_t rng;
} fly_api_state_t;

static fly_api_state_t *api_state(fly_loop_t *loop) {
  fly_api_state_t **slot = (fly_api_state_t **)fly_loop_api_slot(loop);
  if (*slot == NULL) {
    *slot = calloc(1, sizeof(**slot));
    if (*slot != NULL)
      (*slot)->rng = fly_now_ms() * 2654435761u + 1;
  }
  return *slot;
}

static void list_remove(fly_api_t **head, fly_api_t *a) {
  for (; *head != NULL; head = &(*head)->list_next) {
    if (*head == a) {
      *head = a->list_next;
      a->list_next = NULL;
      return;
    }
  }
}

/* ---- error mapping ------------------------------------------------------- */

static const char *status_code(long status) {
  switch (status) {
    case 400: return "FLY_BAD_REQUEST";
    case 401: return "FLY_UNAUTHORIZED";
    case 403: return "FLY_FORBIDDEN";
    case 404: return "FLY_NOT_FOUND";
    case 408: return "FLY_TIMEOUT";
    case 409: return "FLY_CONFLICT";
    case 412: return "FLY_PRECONDITION";
    case 422: return "FLY_UNPROCESSABLE";
    case 429: return "FLY_RATE_LIMITED";
    default: return status >= 500 ? "FLY_UNAVAILABLE" : "FLY_HTTP_ERROR";
  }
}

static void set_http_error(fly_api_t *a) {
  const char *text = NULL;
  cJSON *j = cJSON_ParseWithLength(a->resp.base, a->resp.len);
  cJSON *e = j ? cJSON_GetObjectItemCaseSensitive(j, "error") : NULL;

  if (!cJSON_IsString(e) && j != NULL)
    e = cJSON_GetObjectItemCaseSensitive(j, "message");
  if (cJSON_IsString(e))
    text = e->valuestring;
  else if (a->resp.len > 0)
    text = a->resp.base;
  fly_err_set(&a->req.err, status_code(a->status), "Fly API %s %s: %ld %.300s",
              a->op->method, a->path, a->status, text ? text : "(no body)");
  a->req.err.status = (int)a->status;
  free(a->req.err.fly_error);
  a->req.err.fly_error = text ? strdup(text) : NULL;
  free(a->req.err.request_id);
  a->req.err.request_id = a->request_id ? strdup(a->request_id) : NULL;
  cJSON_Delete(j);
}

static void set_curl_error(fly_api_t *a, CURLcode rc) {
  const char *detail = a->errbuf[0] ? a->errbuf : curl_easy_strerror(rc);
  const char *code = rc == CURLE_OPERATION_TIMEDOUT ? "FLY_TIMEOUT"
                                                     : "FLY_NETWORK";
  fly_err_set(&a->req.err, code, "Fly API %s %s: %s", a->op->method, a->path,
              detail);
  a->req.err.lib_code = (long)rc;
}

/* ---- transfers ----------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
  fly_api_t *a = arg;
  if (size * n > FLY_API_MAX_REPLY - a->resp.len) {
    a->too_large = 1;
    return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
  }
  return fly_buf_append(&a->resp, data, size * n) == 0 ? size * n : 0;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg) {
  fly_api_t *a = arg;
  size_t len = size * n, name_len;
  const char *colon = memchr(data, ':', len);
  char value[256];
  size_t vlen;

  if (colon == NULL)
    return len;
  name_len = (size_t)(colon - data);
  colon++;
  while ((size_t)(colon - data) < len && (*colon == ' ' || *colon == '\t'))
    colon++;
  vlen = len - (size_t)(colon - data);
  while (vlen > 0 && (colon[vlen - 1] == '\r' || colon[vlen - 1] == '\n' ||
                      colon[vlen - 1] == ' '))
    vlen--;
  if (vlen >= sizeof(value))
    vlen = sizeof(value) - 1;
  memcpy(value, colon, vlen);
  value[vlen] = '\0';

  if (name_len == 14 && strncasecmp(data, "fly-request-id", 14) == 0) {
    free(a->request_id);
    a->request_id = strdup(value);
  } else if (name_len == 11 && strncasecmp(data, "retry-after", 11) == 0) {
    char *end;
    long long secs;
    errno = 0;
    secs = strtoll(value, &end, 10);
    if (end != value && *end == '\0' && secs >= 0) {
      /* Clamped: a huge value only means "not within the total bound",
       * which retry_later checks. */
      if (errno == ERANGE || secs > FLY_API_RETRY_AFTER_MAX_S)
        secs = FLY_API_RETRY_AFTER_MAX_S;
      a->retry_after_ms = (int64_t)secs * 1000;
    } else {
      /* An HTTP date: the delay is the distance from now. */
      time_t when = curl_getdate(value, NULL), now = time(NULL);
      if (when > 0) {
        int64_t d = when > now ? (int64_t)(when - now) : 0;
        if (d > FLY_API_RETRY_AFTER_MAX_S)
          d = FLY_API_RETRY_AFTER_MAX_S;
        a->retry_after_ms = d * 1000;
      }
    }
  }
  return len;
}

static void finish(fly_loop_t *loop, fly_api_t *a) {
  fly_loop_done(loop, &a->req);
}

static void begin_transfer(fly_loop_t *loop, fly_api_t *a) {
  fly_api_state_t *st = api_state(loop);
  CURL *e = curl_easy_init();

  if (e == NULL || st == NULL) {
    if (e != NULL)
      curl_easy_cleanup(e);
    fly_err_set(&a->req.err, "ERR_NO_MEMORY", "out of memory");
    finish(loop, a);
    return;
  }
  fly_buf_free(&a->resp);
  free(a->request_id);
  a->request_id = NULL;
  a->retry_after_ms = -1;
  a->too_large = 0;
  a->errbuf[0] = '\0';
  a->status = 0;
  a->attempts++;
  a->attempt_at = fly_now_ms();

  curl_easy_setopt(e, CURLOPT_PRIVATE, a);
  curl_easy_setopt(e, CURLOPT_URL, a->lookup ? a->lookup_url : a->url);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, a->headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, a->errbuf);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)a->attempt_timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "computesdk-fly/0.1 (libcurl)");
  /* libcurl silently resends a request whose reused keep-alive connection
   * closed before any reply (the idle-close race).  For a call that must not
   * run twice that resend is a blind retry: give it a fresh connection,
   * which curl never resends on.  It joins the pool afterwards. */
  if (!a->lookup && (a->op->policy == POLICY_ONCE ||
                     a->op->policy == POLICY_CREATE))
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  if (!a->lookup) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, a->op->method);
    if (a->body != NULL) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, a->body);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)a->body_len);
    } else if (strcmp(a->op->method, "POST") == 0) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
    }
  }
  a->easy = e;
  if (curl_multi_add_handle(fly_loop_multi(loop), e) != CURLM_OK) {
    curl_easy_cleanup(e);
    a->easy = NULL;
    fly_err_set(&a->req.err, "FLY_INTERNAL", "curl_multi_add_handle failed");
    finish(loop, a);
    return;
  }
  a->list_next = st->active;
  st->active = a;
}

static uint64_t next_random(fly_api_state_t *st) {
  st->rng ^= st->rng << 13;
  st->rng ^= st->rng >> 7;
  st->rng ^= st->rng << 17;
  return st->rng;
}

/* The delay before the next attempt: exponential from base_ms, capped at
 * max_ms, jittered in [d/2, d] so clients that failed together do not
 * retry together.  A Retry-After longer than that replaces it (plus up to a
 * tenth more, at most a second, for the same reason); nothing is shorter
 * than the floor. */
static uint64_t backoff_ms(fly_api_state_t *st, fly_api_t *a) {
  uint64_t d = a->base_ms, delay;
  int i;

  for (i = 1; i < a->attempts && d < a->max_ms; i++)
    d *= 2;
  if (d > a->max_ms)
    d = a->max_ms;
  delay = d / 2 + (d > 1 ? next_random(st) % (d / 2 + 1) : 0);
  if (a->retry_after_ms >= 0 && (uint64_t)a->retry_after_ms > delay) {
    uint64_t j = (uint64_t)a->retry_after_ms / 10;
    delay = (uint64_t)a->retry_after_ms;
    if (j > 1000)
      j = 1000;
    delay += j > 0 ? next_random(st) % (j + 1) : 0;
  }
  if (delay < FLY_API_RETRY_FLOOR_MS)
    delay = FLY_API_RETRY_FLOOR_MS +
            next_random(st) % (FLY_API_RETRY_FLOOR_MS / 2 + 1);
  return delay;
}

/* Schedule another transfer after the backoff, or give up (with the error
 * already set) when that would pass `bound` ms from the call's start. */
static void retry_later(fly_loop_t *loop, fly_api_t *a, int lookup,
                        uint64_t bound) {
  fly_api_state_t *st = api_state(loop);
  uint64_t now = fly_now_ms(), delay;

  delay = backoff_ms(st, a);
  if (now + delay - a->started_at > bound) {
    size_t n = strlen(a->req.err.message);
    snprintf(a->req.err.message + n, sizeof(a->req.err.message) - n,
             " (gave up after %d attempts in %llu ms)", a->attempts,
             (unsigned long long)(now - a->started_at));
    finish(loop, a);
    return;
  }
  a->lookup = lookup;
  a->due_at = now + delay;
  a->list_next = st->timers;
  st->timers = a;
  fly_loop_wake_at(loop, a->due_at);
}

static int transient_status(long s) {
  return s == 408 || s == 429 || s >= 500;
}

/* The request never reached the server, so repeating it cannot duplicate
 * anything. */
static int never_sent(CURLcode rc) {
  return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
         rc == CURLE_COULDNT_RESOLVE_PROXY;
}

static void on_lookup_done(fly_loop_t *loop, fly_api_t *a, CURLcode rc) {
  cJSON *list, *first;

  if (rc != CURLE_OK || a->status != 200) {
    /* Keep the create's own error if the look-up fails too. */
    retry_later(loop, a, 1, a->total_ms);
    return;
  }
  list = cJSON_ParseWithLength(a->resp.base, a->resp.len);
  first = NULL;
  if (cJSON_IsArray(list)) {
    /* Only a machine whose metadata carries our create id is ours (a
     * server that ignores the filter lists every machine). */
    cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, list) {
      cJSON *cfg = cJSON_GetObjectItemCaseSensitive(m, "config");
      cJSON *md = cJSON_GetObjectItemCaseSensitive(cfg, "metadata");
      cJSON *v = cJSON_GetObjectItemCaseSensitive(md, a->create_key);
      if (cJSON_IsString(v) && strcmp(v->valuestring, a->create_id) == 0) {
        first = cJSON_DetachItemFromArray(list, i);
        break;
      }
      i++;
    }
  }
  if (first != NULL) {
    /* The create did happen: answer with that machine. */
    cJSON_Delete(list);
    fly_err_clear(&a->req.err);
    a->json = first;
    a->status = 200;
    finish(loop, a);
    return;
  }
  cJSON_Delete(list);
  /* Provably not created: the create can be sent again. */
  retry_later(loop, a, 0, a->total_ms);
}

void fly_api_on_done(fly_loop_t *loop, CURL *easy, CURLcode rc) {
  fly_api_t *a = NULL;
  fly_api_state_t *st = api_state(loop);
  int policy, transient;

  curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&a);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &a->status);
  curl_multi_remove_handle(fly_loop_multi(loop), easy);
  curl_easy_cleanup(easy);
  a->easy = NULL;
  list_remove(&st->active, a);

  if (a->too_large) {
    /* Not transient: the same reply would come again. */
    fly_err_set(&a->req.err, "FLY_RESPONSE_TOO_LARGE",
                "Fly API %s %s: the reply is larger than %zu bytes",
                a->op->method, a->path, FLY_API_MAX_REPLY);
    fly_buf_free(&a->resp);
    finish(loop, a);
    return;
  }
  if (a->lookup) {
    on_lookup_done(loop, a, rc);
    return;
  }
  fly_err_clear(&a->req.err);
  if (rc == CURLE_OK && a->status >= 200 && a->status < 300) {
    if (a->resp.len > 0)
      a->json = cJSON_ParseWithLength(a->resp.base, a->resp.len);
    finish(loop, a);
    return;
  }

  policy = a->op->policy;
  if (rc != CURLE_OK)
    set_curl_error(a, rc);
  else
    set_http_error(a);

  /* A long poll that ran out is not a failure yet: ask again, at once,
   * until the caller's bound; one that came back at once is backed off. */
  if (policy == POLICY_WAIT && rc == CURLE_OK && a->status == 408) {
    uint64_t now = fly_now_ms();
    if (now - a->attempt_at >= FLY_API_WAIT_MIN_MS &&
        now - a->started_at < a->wait_total_ms) {
      a->attempts = 0;
      begin_transfer(loop, a);
    } else {
      retry_later(loop, a, 0, a->wait_total_ms);
    }
    return;
  }

  transient = rc != CURLE_OK ? 1 : transient_status(a->status);
  if (!transient) {
    finish(loop, a);
    return;
  }
  if (policy == POLICY_IDEMPOTENT || policy == POLICY_WAIT ||
      (rc != CURLE_OK && never_sent(rc)) ||
      (rc == CURLE_OK && a->status == 429)) {
    retry_later(loop, a, 0, a->total_ms);
    return;
  }
  if (policy == POLICY_CREATE && a->lookup_url != NULL) {
    /* Ambiguous: the machine may exist.  Look before sending again. */
    retry_later(loop, a, 1, a->total_ms);
    return;
  }
  finish(loop, a);
}

uint64_t fly_api_run_timers(fly_loop_t *loop, uint64_t now) {
  fly_api_state_t *st = api_state(loop);
  fly_api_t **p, *due = NULL;
  uint64_t next = UINT64_MAX;

  if (st == NULL)
    return next;
  /* Move the due ones out first: begin_transfer may touch the lists. */
  for (p = &st->timers; *p != NULL;) {
    fly_api_t *a = *p;
    if (a->due_at <= now) {
      *p = a->list_next;
      a->list_next = due;
      due = a;
    } else {
      if (a->due_at < next)
        next = a->due_at;
      p = &a->list_next;
    }
  }
  while (due != NULL) {
    fly_api_t *a = due;
    due = a->list_next;
    a->list_next = NULL;
    begin_transfer(loop, a);
  }
  return next;
}

void fly_api_shutdown(fly_loop_t *loop) {
  fly_api_state_t **slot = (fly_api_state_t **)fly_loop_api_slot(loop);
  fly_api_state_t *st = *slot;
  fly_api_t *a;

  if (st == NULL)
    return;
  while ((a = st->active) != NULL) {
    st->active = a->list_next;
    curl_multi_remove_handle(fly_loop_multi(loop), a->easy);
    curl_easy_cleanup(a->easy);
    a->easy = NULL;
    fly_err_set(&a->req.err, "FLY_ABORTED", "the client is shutting down");
    finish(loop, a);
  }
  while ((a = st->timers) != NULL) {
    st->timers = a->list_next;
    fly_err_set(&a->req.err, "FLY_ABORTED", "the client is shutting down");
    finish(loop, a);
  }
  free(st);
  *slot = NULL;
}

/* ---- JS thread ----------------------------------------------------------- */

/* NULL with an exception pending when a napi call fails. */
static napi_value json_to_js(napi_env env, const cJSON *j) {
  napi_value v = NULL, item;
  const cJSON *c;
  uint32_t i = 0;

  if (cJSON_IsObject(j)) {
    FLY_NAPI_CALL(env, napi_create_object(env, &v), NULL);
    cJSON_ArrayForEach(c, j) {
      if (c->string == NULL)
        continue;
      if ((item = json_to_js(env, c)) == NULL)
        return NULL;
      FLY_NAPI_CALL(env, napi_set_named_property(env, v, c->string, item),
                    NULL);
    }
  } else if (cJSON_IsArray(j)) {
    FLY_NAPI_CALL(env,
                  napi_create_array_with_length(
                      env, (size_t)cJSON_GetArraySize(j), &v),
                  NULL);
    cJSON_ArrayForEach(c, j) {
      if ((item = json_to_js(env, c)) == NULL)
        return NULL;
      FLY_NAPI_CALL(env, napi_set_element(env, v, i++, item), NULL);
    }
  } else if (cJSON_IsString(j)) {
    FLY_NAPI_CALL(env,
                  napi_create_string_utf8(env, j->valuestring,
                                          NAPI_AUTO_LENGTH, &v),
                  NULL);
  } else if (cJSON_IsNumber(j)) {
    FLY_NAPI_CALL(env, napi_create_double(env, j->valuedouble, &v), NULL);
  } else if (cJSON_IsBool(j)) {
    FLY_NAPI_CALL(env, napi_get_boolean(env, cJSON_IsTrue(j), &v), NULL);
  } else {
    FLY_NAPI_CALL(env, napi_get_null(env, &v), NULL);
  }
  return v;
}

static napi_value api_result(napi_env env, fly_req_t *req) {
  fly_api_t *a = (fly_api_t *)req;
  napi_value obj, body;

  FLY_NAPI_CALL(env, napi_create_object(env, &obj), NULL);
  fly_js_set_int(env, obj, "status", a->status);
  if (a->json != NULL) {
    body = json_to_js(env, a->json);
  } else if (a->resp.len > 0) {
    FLY_NAPI_CALL(env,
                  napi_create_string_utf8(env, a->resp.base, a->resp.len,
                                          &body),
                  NULL);
  } else {
    FLY_NAPI_CALL(env, napi_get_null(env, &body), NULL);
  }
  fly_js_set_value(env, obj, "body", body);
  fly_js_set_str(env, obj, "requestId", a->request_id);
  return obj;
}

static void api_free(napi_env env, fly_req_t *req) {
  fly_api_t *a = (fly_api_t *)req;
  (void)env;
  free(a->path);
  free(a->url);
  free(a->lookup_url);
  free(a->create_id);
  free(a->create_key);
  free(a->body);
  /* The first header is Authorization: the token. */
  for (struct curl_slist *h = a->headers; h != NULL; h = h->next)
    fly_wipe(h->data, strlen(h->data));
  curl_slist_free_all(a->headers);
  fly_buf_free(&a->resp);
  free(a->request_id);
  cJSON_Delete(a->json);
}

static void api_start(fly_loop_t *loop, fly_req_t *req) {
  fly_api_t *a = (fly_api_t *)req;
  a->started_at = fly_now_ms();
  begin_transfer(loop, a);
}

static const fly_req_vt_t api_vt = {api_start, api_result, api_free, NULL};

/* Appends s URL-escaped. */
static int append_escaped(fly_buf_t *b, const char *s) {
  char *e = curl_easy_escape(NULL, s, 0);
  int rc;
  if (e == NULL)
    return -1;
  rc = fly_buf_append(b, e, strlen(e));
  curl_free(e);
  return rc;
}

/* The path of op with {app}/{machine}/{volume}/{key} filled from params. */
static int build_path(napi_env env, const fly_api_op_t *op, napi_value params,
                      fly_buf_t *out) {
  const char *p = op->path;

  while (*p != '\0') {
    const char *open = strchr(p, '{'), *close;
    char name[16], *value = NULL;
    size_t n;

    if (open == NULL)
      return fly_buf_append(out, p, strlen(p));
    close = strchr(open, '}');
    if (fly_buf_append(out, p, (size_t)(open - p)) != 0)
      return -1;
    n = (size_t)(close - open - 1);
    memcpy(name, open + 1, n);
    name[n] = '\0';
    if (params == NULL) {
      fly_throw_invalid(env, "params.%s is required for %s", name, op->name);
      return -1;
    }
    if (fly_js_prop_str(env, params, name, 1, &value) != 0)
      return -1;
    if (value[0] == '\0') {
      free(value);
      fly_throw_invalid(env, "params.%s must not be empty", name);
      return -1;
    }
    if (append_escaped(out, value) != 0) {
      free(value);
      return -1;
    }
    free(value);
    p = close + 1;
  }
  return 0;
}

/* query: an array of [name, value] string pairs. */
static int build_query(napi_env env, napi_value obj, fly_buf_t *out) {
  napi_value q, pair, k, v;
  bool has = false, is_array = false;
  uint32_t n = 0, i, plen = 0;

  FLY_NAPI_CALL(env, napi_has_named_property(env, obj, "query", &has), -1);
  if (!has)
    return 0;
  FLY_NAPI_CALL(env, napi_get_named_property(env, obj, "query", &q), -1);
  FLY_NAPI_CALL(env, napi_is_array(env, q, &is_array), -1);
  if (!is_array) {
    fly_throw_invalid(env, "query must be an array of [name, value] pairs");
    return -1;
  }
  FLY_NAPI_CALL(env, napi_get_array_length(env, q, &n), -1);
  for (i = 0; i < n; i++) {
    char *ks = NULL, *vs = NULL;
    int rc;
    FLY_NAPI_CALL(env, napi_get_element(env, q, i, &pair), -1);
    FLY_NAPI_CALL(env, napi_is_array(env, pair, &is_array), -1);
    if (is_array)
      FLY_NAPI_CALL(env, napi_get_array_length(env, pair, &plen), -1);
    if (!is_array || plen != 2) {
      fly_throw_invalid(env, "query must be an array of [name, value] pairs");
      return -1;
    }
    FLY_NAPI_CALL(env, napi_get_element(env, pair, 0, &k), -1);
    FLY_NAPI_CALL(env, napi_get_element(env, pair, 1, &v), -1);
    if (fly_js_str(env, k, "query name", &ks) != 0)
      return -1;
    if (fly_js_str(env, v, "query value", &vs) != 0) {
      free(ks);
      return -1;
    }
    rc = fly_buf_append(out, i == 0 ? "?" : "&", 1) != 0 ||
         append_escaped(out, ks) != 0 || fly_buf_append(out, "=", 1) != 0 ||
         append_escaped(out, vs) != 0;
    free(ks);
    free(vs);
    if (rc) {
      fly_throw_nomem(env);
      return -1;
    }
  }
  return 0;
}

/* An optional object property: absent or not an object -> *out = NULL. */
static int opt_object(napi_env env, napi_value obj, const char *name,
                      napi_value *out) {
  napi_valuetype t;
  bool has = false;

  *out = NULL;
  FLY_NAPI_CALL(env, napi_has_named_property(env, obj, name, &has), -1);
  if (!has)
    return 0;
  FLY_NAPI_CALL(env, napi_get_named_property(env, obj, name, out), -1);
  FLY_NAPI_CALL(env, napi_typeof(env, *out, &t), -1);
  if (t != napi_object)
    *out = NULL;
  return 0;
}

static int starts_with_ci(const char *s, const char *prefix) {
  return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* The Authorization header: like fly-go, strip a Bearer/FlyV1 prefix and
 * put back the one the token's kind needs (macaroons are FlyV1). */
static char *auth_header(const char *token) {
  fly_buf_t b = {0};
  const char *t = token;
  int macaroon;

  while (*t == ' ')
    t++;
  if (starts_with_ci(t, "Bearer "))
    t += 7;
  else if (starts_with_ci(t, "FlyV1 "))
    t += 6;
  while (*t == ' ')
    t++;
  macaroon = strncmp(t, "fm1r_", 5) == 0 || strncmp(t, "fm1a_", 5) == 0 ||
             strncmp(t, "fm2_", 4) == 0 || strncmp(t, "m2.", 3) == 0 ||
             strchr(t, ',') != NULL;
  if (fly_buf_printf(&b, "Authorization: %s %s", macaroon ? "FlyV1" : "Bearer",
                     t) != 0) {
    fly_buf_wipe_free(&b);
    return NULL;
  }
  return fly_buf_steal(&b, NULL);
}

static int valid_header_value(const char *s) {
  for (; *s != '\0'; s++)
    if (*s == '\r' || *s == '\n')
      return 0;
  return 1;
}

static const fly_api_op_t *find_op(const char *name) {
  size_t i;
  for (i = 0; i < sizeof(api_ops) / sizeof(api_ops[0]); i++)
    if (strcmp(api_ops[i].name, name) == 0)
      return &api_ops[i];
  return NULL;
}

static int add_header(struct curl_slist **h, const char *line) {
  struct curl_slist *n = curl_slist_append(*h, line);
  if (n == NULL)
    return -1;
  *h = n;
  return 0;
}

/* api({ apiHostname, apiToken, op, params?, query?, body?, leaseNonce?, timeoutMs?,
 *       waitTotalMs?, retry?: { baseMs, maxMs, totalMs }, createId?,
 *       createIdKey? }) -> Promise<{ status, body, requestId }> */
napi_value fly_napi_api(napi_env env, napi_callback_info info) {
  napi_value opts, params = NULL, retry = NULL;
  fly_api_t *a;
  char *base = NULL, *token = NULL, *opname = NULL, *nonce = NULL;
  char *create_id = NULL, *create_key = NULL, *auth = NULL;
  fly_buf_t path = {0}, line = {0};
  fly_buf_t body = {0};
  size_t blen;
  int ok = 0;

  if (fly_js_arg_obj(env, info, 0, &opts) != 0)
    return NULL;
  a = fly_req_new(env, sizeof(*a), &api_vt);
  if (a == NULL)
    return NULL;

  if (fly_js_prop_str(env, opts, "apiHostname", 1, &base) != 0 ||
      fly_js_prop_str(env, opts, "apiToken", 1, &token) != 0 ||
      fly_js_prop_str(env, opts, "op", 1, &opname) != 0 ||
      fly_js_prop_str(env, opts, "leaseNonce", 0, &nonce) != 0 ||
      fly_js_prop_str(env, opts, "createId", 0, &create_id) != 0 ||
      fly_js_prop_str(env, opts, "createIdKey", 0, &create_key) != 0 ||
      fly_js_prop_bytes(env, opts, "body", &body) != 0 ||
      fly_js_prop_u64(env, opts, "timeoutMs", 30000, &a->attempt_timeout_ms) !=
          0 ||
      fly_js_prop_u64(env, opts, "waitTotalMs", 60000, &a->wait_total_ms) != 0)
    goto cleanup;

  a->op = find_op(opname);
  if (a->op == NULL) {
    fly_throw_invalid(env, "unknown API operation '%s'", opname);
    goto cleanup;
  }
  if (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) {
    fly_throw_invalid(env, "apiHostname must be an http:// or https:// URL");
    goto cleanup;
  }
  if (!valid_header_value(token) || (nonce && !valid_header_value(nonce))) {
    fly_throw_invalid(env, "the API token must not contain line breaks");
    goto cleanup;
  }

  if (opt_object(env, opts, "params", &params) != 0 ||
      opt_object(env, opts, "retry", &retry) != 0)
    goto cleanup;
  a->base_ms = 500;
  a->max_ms = 5000;
  a->total_ms = 30000;
  if (retry != NULL &&
      (fly_js_prop_u64(env, retry, "baseMs", 500, &a->base_ms) != 0 ||
       fly_js_prop_u64(env, retry, "maxMs", 5000, &a->max_ms) != 0 ||
       fly_js_prop_u64(env, retry, "totalMs", 30000, &a->total_ms) != 0))
    goto cleanup;
  if (a->base_ms == 0)
    a->base_ms = 1;

  if (build_path(env, a->op, params, &path) != 0 ||
      build_query(env, opts, &path) != 0)
    goto cleanup;
  blen = strlen(base);
  while (blen > 0 && base[blen - 1] == '/')
    base[--blen] = '\0';
  if (fly_buf_printf(&line, "%s%s", base, path.base) != 0)
    goto nomem;
  a->url = fly_buf_steal(&line, NULL);
  a->path = fly_buf_steal(&path, NULL);

  if (a->op->policy == POLICY_CREATE && create_id != NULL) {
    fly_buf_t lu = {0};
    char *app = NULL;
    if (params == NULL || fly_js_prop_str(env, params, "app", 1, &app) != 0)
      goto cleanup;
    if (fly_buf_printf(&lu, "%s/v1/apps/", base) != 0 ||
        append_escaped(&lu, app) != 0 ||
        fly_buf_printf(&lu, "/machines?metadata.") != 0 ||
        append_escaped(&lu, create_key ? create_key : "computesdk_create_id") !=
            0 ||
        fly_buf_append(&lu, "=", 1) != 0 || append_escaped(&lu, create_id) != 0) {
      free(app);
      fly_buf_free(&lu);
      goto nomem;
    }
    free(app);
    a->lookup_url = fly_buf_steal(&lu, NULL);
    a->create_id = create_id;
    a->create_key = create_key ? create_key : strdup("computesdk_create_id");
    create_id = create_key = NULL;
    if (a->create_key == NULL)
      goto nomem;
  }

  auth = auth_header(token);
  if (auth == NULL || add_header(&a->headers, auth) != 0 ||
      add_header(&a->headers, "Accept: application/json") != 0 ||
      add_header(&a->headers, "Expect:") != 0)
    goto nomem;
  if (body.len > 0 &&
      add_header(&a->headers, "Content-Type: application/json") != 0)
    goto nomem;
  if (nonce != NULL) {
    if (fly_buf_printf(&line, "fly-machine-lease-nonce: %s", nonce) != 0 ||
        add_header(&a->headers, line.base) != 0)
      goto nomem;
    fly_buf_free(&line);
  }
  if (body.len > 0) {
    a->body_len = body.len;
    a->body = fly_buf_steal(&body, NULL);
  }

  ok = 1;
  goto cleanup;

nomem:
  fly_throw_nomem(env);
cleanup:
  /* The token lives on only inside the header list. */
  fly_secret_free(auth);
  fly_secret_free(token);
  free(base);
  free(opname);
  free(nonce);
  free(create_id);
  free(create_key);
  fly_buf_free(&path);
  fly_buf_free(&line);
  fly_buf_free(&body);
  if (ok)
    return fly_req_submit(env, &a->req);
  fly_req_free(env, &a->req);
  return NULL;
}
