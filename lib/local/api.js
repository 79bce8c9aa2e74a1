'use strict';
// fly-local's HTTP side: the /v1 Machines API with Fly's shapes, status codes
// and error texts (shared/fly-machines/openapi.yaml, fly-machines-api.md).
const crypto = require('crypto');
const ids = require('./ids');
const { parseDuration, signalName, parseImage, SIGNALS, STOP_SIGNALS } = require('./machines');

const REGIONS = [
  ['ams', 'Amsterdam, Netherlands', 'eu', 52.374, 4.8897],
  ['arn', 'Stockholm, Sweden', 'eu', 59.6512, 17.9178],
  ['bom', 'Mumbai, India', 'ap', 19.097, 72.8745],
  ['cdg', 'Paris, France', 'eu', 48.8607, 2.3531],
  ['dfw', 'Dallas, Texas (US)', 'na', 32.7791, -96.8003],
  ['ewr', 'Secaucus, NJ (US)', 'na', 40.7893, -74.0565],
  ['fra', 'Frankfurt, Germany', 'eu', 50.1167, 8.6833],
  ['gru', 'Sao Paulo, Brazil', 'sa', -23.5505, -46.6333],
  ['iad', 'Ashburn, Virginia (US)', 'na', 39.0438, -77.4874],
  ['jnb', 'Johannesburg, South Africa', 'af', -26.1367, 28.2411],
  ['lax', 'Los Angeles, California (US)', 'na', 33.9416, -118.4085],
  ['lhr', 'London, United Kingdom', 'eu', 51.5074, -0.1278],
  ['nrt', 'Tokyo, Japan', 'ap', 35.6762, 139.6503],
  ['ord', 'Chicago, Illinois (US)', 'na', 41.8781, -87.6298],
  ['sin', 'Singapore, Singapore', 'ap', 1.3521, 103.8198],
  ['sjc', 'San Jose, California (US)', 'na', 37.3541, -121.9552],
  ['syd', 'Sydney, Australia', 'oc', -33.8688, 151.2093],
  ['yyz', 'Toronto, Canada', 'na', 43.6532, -79.3832],
];
const REGION_CODES = new Set(REGIONS.map((r) => r[0]));
const WAIT_STATES = new Set(['started', 'stopped', 'suspended', 'destroyed', 'failed', 'settled']);
const LEASE_OWNER = 'fly-local@tokens.fly.io';

class HttpError extends Error {
  constructor(status, error, extra) {
    super(error);
    this.status = status;
    this.body = error === null ? null : { error, ...(extra || {}) };
  }
}
const E = {
  bad: (msg) => new HttpError(400, `invalid_argument: ${msg}`),
  notFound: (what) => new HttpError(404, `not_found: ${what} not found`),
  precondition: (msg) => new HttpError(412, `failed_precondition: ${msg}`),
  aborted: (msg) => new HttpError(409, `aborted: ${msg}`),
};

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function truthy(v) {
  return v === 'true' || v === '1' || v === 't' || v === 'True';
}

function isoSeconds(ms) {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

/* Fly's config checks that matter to a client, with Fly-like texts. */
function validateConfig(config) {
  if (!isObject(config)) throw E.bad('config is required');
  if (typeof config.image !== 'string' || !config.image.trim()) throw E.bad('image is required');
  if (config.env != null) {
    if (!isObject(config.env)) throw E.bad('config.env must be an object of strings');
    for (const [k, v] of Object.entries(config.env)) {
      if (typeof v !== 'string') throw E.bad(`config.env.${k} must be a string`);
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw E.bad(`invalid environment variable name ${JSON.stringify(k)}`);
    }
  }
  if (config.metadata != null) {
    if (!isObject(config.metadata)) throw E.bad('config.metadata must be an object of strings');
    for (const [k, v] of Object.entries(config.metadata)) {
      if (typeof v !== 'string') throw E.bad(`config.metadata.${k} must be a string`);
    }
  }
  if (config.guest != null) {
    const g = config.guest;
    if (!isObject(g)) throw E.bad('config.guest must be an object');
    const kind = g.cpu_kind || 'shared';
    const cpus = g.cpus == null ? 1 : g.cpus;
    if (kind !== 'shared' && kind !== 'performance') throw E.bad(`invalid cpu_kind ${JSON.stringify(kind)}`);
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 16) throw E.bad(`invalid number of cpus ${cpus}`);
    if (g.memory_mb != null) {
      const step = kind === 'shared' ? 256 : 2048;
      const min = kind === 'shared' ? 256 * cpus : 2048 * cpus;
      const max = kind === 'shared' ? 2048 * cpus : 8192 * cpus;
      const mem = g.memory_mb;
      if (!Number.isInteger(mem) || mem % step !== 0 || mem < min || mem > max) {
        throw E.bad(`invalid memory size ${mem}MB for ${cpus} ${kind} cpu(s): must be a multiple of ${step}MB between ${min}MB and ${max}MB`);
      }
    }
  }
  if (config.files != null) {
    if (!Array.isArray(config.files)) throw E.bad('config.files must be an array');
    for (const f of config.files) {
      if (!isObject(f) || typeof f.guest_path !== 'string' || !f.guest_path.startsWith('/')) {
        throw E.bad('file guest_path must be an absolute path');
      }
      if (/[\0\n]/.test(f.guest_path) || f.guest_path.split('/').includes('..')) {
        throw E.bad(`invalid guest_path ${JSON.stringify(f.guest_path)}`);
      }
      const hasRaw = f.raw_value != null;
      const hasSecret = f.secret_name != null;
      if (hasRaw === hasSecret) throw E.bad(`file ${f.guest_path}: exactly one of raw_value and secret_name must be set`);
      if (hasSecret) throw E.bad(`file ${f.guest_path}: secret ${JSON.stringify(f.secret_name)} not found`);
      if (typeof f.raw_value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(f.raw_value.replace(/\s/g, ''))) {
        throw E.bad(`file ${f.guest_path}: raw_value must be base64`);
      }
      if (f.mode != null && !(Number.isInteger(f.mode) && f.mode >= 0 && f.mode <= 0o7777)) {
        throw E.bad(`file ${f.guest_path}: invalid mode`);
      }
    }
  }
  if (config.init != null) {
    if (!isObject(config.init)) throw E.bad('config.init must be an object');
    for (const k of ['exec', 'entrypoint', 'cmd']) {
      const v = config.init[k];
      if (v != null && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) {
        throw E.bad(`config.init.${k} must be an array of strings`);
      }
    }
  }
  if (config.restart != null) {
    const r = config.restart;
    if (!isObject(r)) throw E.bad('config.restart must be an object');
    if (r.policy != null && r.policy !== '' && !['no', 'always', 'on-failure'].includes(r.policy)) {
      throw E.bad(`invalid restart policy ${JSON.stringify(r.policy)}`);
    }
  }
  if (config.stop_config != null) {
    const sc = config.stop_config;
    if (sc.signal != null && !signalName(sc.signal, STOP_SIGNALS)) throw E.bad(`invalid stop signal ${JSON.stringify(sc.signal)}`);
    if (sc.timeout != null && parseDuration(sc.timeout) == null) throw E.bad(`invalid stop timeout ${JSON.stringify(sc.timeout)}`);
  }
}

/* Normalised copy as Fly echoes it back (with guest defaults). */
function normaliseConfig(config) {
  const c = JSON.parse(JSON.stringify(config));
  c.guest = { cpu_kind: 'shared', cpus: 1, memory_mb: 256, ...(c.guest || {}) };
  if (!c.guest.memory_mb) c.guest.memory_mb = c.guest.cpu_kind === 'performance' ? 2048 * c.guest.cpus : 256;
  return c;
}

/* Split a deprecated exec `cmd` string like a shell would, without expansion. */
function splitCommand(s) {
  const out = [];
  let cur = '';
  let inWord = false;
  let quote = null;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    if (quote) {
      if (ch === quote) quote = null;
      else if (ch === '\\' && quote === '"' && i + 1 < s.length && '"\\$`'.includes(s[i + 1])) cur += s[++i];
      else cur += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      inWord = true;
    } else if (ch === '\\' && i + 1 < s.length) {
      cur += s[++i];
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += ch;
      inWord = true;
    }
  }
  if (quote) throw E.bad('unterminated quote in cmd');
  if (inWord) out.push(cur);
  return out;
}

function createApi(ctx) {
  const { store, faults, token, stats } = ctx;
  const routes = [];
  const route = (method, pattern, handler, opts = {}) => routes.push({ method, pattern, handler, opts });

  const getApp = (name) => {
    const app = store.apps.get(name);
    if (!app) throw E.notFound('app');
    return app;
  };
  const getMachine = (appName, id) => {
    const app = getApp(appName);
    const m = app.machines.get(id);
    if (!m) throw E.notFound('machine');
    return m;
  };
  const liveMachine = (appName, id) => {
    const m = getMachine(appName, id);
    if (m.state === 'destroyed') throw E.notFound('machine');
    return m;
  };
  const checkLease = (m, req) => {
    const lease = m.leaseValid();
    if (lease && req.headers['fly-machine-lease-nonce'] !== lease.nonce) {
      throw E.aborted(`machine ID ${m.id} lease currently held by ${lease.owner}, expires at ${isoSeconds(lease.expires_at * 1000)}`);
    }
  };

  /* ---- platform ---- */
  route('GET', /^\/v1\/platform\/regions$/, () => [200, {
    nearest: store.region,
    regions: REGIONS.map(([code, name, geo, lat, lon]) => ({
      code, name, geo_region: geo, latitude: lat, longitude: lon, gateway_available: true,
      requires_paid_plan: false, deprecated: false, mpg_available: false,
    })),
  }], { noAuth: true });

  /* ---- apps ---- */
  route('GET', /^\/v1\/apps$/, (req, url) => {
    const org = url.searchParams.get('org_slug');
    if (!org) throw E.bad('org_slug is required');
    const apps = [...store.apps.values()].filter((a) => a.org === org).sort((a, b) => a.createdAt - b.createdAt);
    const limitRaw = url.searchParams.get('limit');
    let start = 0;
    const cursor = url.searchParams.get('cursor');
    if (cursor) {
      start = Number(Buffer.from(cursor, 'base64url').toString());
      if (!Number.isInteger(start) || start < 0) throw E.bad('invalid cursor');
    }
    const body = { total_apps: apps.length };
    if (limitRaw != null) {
      const limit = Number(limitRaw);
      if (!Number.isInteger(limit) || limit < 1 || limit > 5000) throw E.bad('limit must be between 1 and 5000');
      body.apps = apps.slice(start, start + limit).map((a) => store.appJSON(a));
      if (start + limit < apps.length) body.next_cursor = Buffer.from(String(start + limit)).toString('base64url');
    } else {
      body.apps = apps.slice(start).map((a) => store.appJSON(a));
    }
    return [200, body];
  });

  route('POST', /^\/v1\/apps$/, (req, url, body) => {
    if (!isObject(body)) throw E.bad('invalid request body');
    const name = body.name || body.app_name;
    if (typeof name !== 'string' || !name) throw E.bad('app name is required');
    if (!/^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$|^[a-z0-9]$/.test(name)) {
      throw new HttpError(422, 'validation failed: Name can only contain lowercase letters, numbers and dashes');
    }
    const org = body.org_slug || 'personal';
    if (body.idempotency_key) {
      const prev = store.idempotency.get(body.idempotency_key);
      if (prev) {
        if (prev.name !== name) throw new HttpError(422, 'validation failed: idempotency key was used for another app name');
        if (store.apps.get(prev.name) === prev) return [201, { ...store.appJSON(prev), created_at: prev.createdAt }];
      }
    }
    if (store.apps.has(name)) {
      throw new HttpError(422, 'validation failed: Name has already been taken', { status: 'name_taken' });
    }
    const app = store.createApp({ name, org, network: body.network });
    if (body.idempotency_key) store.idempotency.set(body.idempotency_key, app);
    return [201, { ...store.appJSON(app), created_at: app.createdAt }];
  });

  route('GET', /^\/v1\/apps\/([^/]+)$/, (req, url, body, [name]) => [200, store.appJSON(getApp(name))]);

  route('DELETE', /^\/v1\/apps\/([^/]+)$/, (req, url, body, [name]) => {
    const app = getApp(name);
    const p = store.destroyApp(app);
    ctx.track(p);
    return [202, null];
  });

  /* ---- machines ---- */
  const M = '^\\/v1\\/apps\\/([^/]+)\\/machines';
  const rx = (s) => new RegExp(`${M}${s}$`);

  route('GET', rx(''), (req, url, body, [appName]) => {
    const app = getApp(appName);
    const q = url.searchParams;
    const includeDeleted = truthy(q.get('include_deleted'));
    const summary = truthy(q.get('summary'));
    const region = q.get('region');
    const states = q.getAll('state').flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
    const meta = [];
    for (const [k, v] of q) if (k.startsWith('metadata.')) meta.push([k.slice(9), v]);
    let list = [...app.machines.values()].filter((m) => {
      if (m.state === 'destroyed' && !includeDeleted) return false;
      if (region && m.region !== region) return false;
      if (states.length && !states.includes(m.state)) return false;
      const md = m.config.metadata || {};
      return meta.every(([k, v]) => md[k] === v);
    });
    list.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
    const headers = {};
    const limitRaw = q.get('limit');
    const cursor = q.get('cursor');
    if (cursor) {
      const after = Buffer.from(cursor, 'base64url').toString();
      const i = list.findIndex((m) => m.id === after);
      if (i < 0) throw E.bad('invalid cursor');
      list = list.slice(i + 1);
    }
    if (limitRaw != null) {
      const limit = Number(limitRaw);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw E.bad('limit must be between 1 and 1000');
      if (list.length > limit) {
        list = list.slice(0, limit);
        headers['fly-next-cursor'] = Buffer.from(list[list.length - 1].id).toString('base64url');
      }
    }
    const includeLease = truthy(q.get('include_leases'));
    return [200, list.map((m) => m.toJSON({ summary, includeLease })), headers];
  });

  route('POST', rx(''), async (req, url, body, [appName]) => {
    const app = getApp(appName);
    if (!isObject(body)) throw E.bad('invalid request body');
    validateConfig(body.config);
    if (body.region != null && body.region !== '' && !REGION_CODES.has(body.region)) {
      throw E.bad(`region ${JSON.stringify(body.region)} not found`);
    }
    if (body.name != null && typeof body.name !== 'string') throw E.bad('name must be a string');
    if (body.lease_ttl != null && !(Number.isInteger(body.lease_ttl) && body.lease_ttl > 0)) {
      throw E.bad('lease_ttl must be a positive number of seconds');
    }
    const m = await store.createMachine(app, { ...body, config: normaliseConfig(body.config), region: body.region || undefined });
    let nonce;
    if (body.lease_ttl) {
      m.lease = { nonce: ids.nonce(), expires_at: Math.floor(Date.now() / 1000) + body.lease_ttl,
        owner: LEASE_OWNER, description: '', version: ids.ulid() };
      nonce = m.lease.nonce;
    }
    const json = m.toJSON({ nonce });
    if (!body.skip_launch) {
      m.launching = true;
      m.enqueue(() => m.boot());
    }
    return [200, json];
  });

  route('GET', rx('\\/([^/]+)'), (req, url, body, [appName, id]) => {
    const m = getMachine(appName, id);
    const v = url.searchParams.get('version');
    if (v && v !== m.version) {
      const old = m.versions.find((x) => x.version === v);
      if (!old) throw E.notFound('machine version');
      const j = m.toJSON({});
      return [200, { ...j, version: v, instance_id: v, state: 'replaced', config: old.user_config }];
    }
    return [200, m.toJSON({ includeLease: truthy(url.searchParams.get('include_leases')), nonce: undefined })];
  });

  route('POST', rx('\\/([^/]+)'), (req, url, body, [appName, id]) => {
    const m = getMachine(appName, id);
    if (m.state === 'destroyed' || m.state === 'destroying') throw E.notFound('machine');
    if (!isObject(body)) throw E.bad('invalid request body');
    checkLease(m, req);
    if (body.current_version && body.current_version !== m.version) {
      throw new HttpError(409, `aborted: machine ${m.id} version ${body.current_version} is not the current version ${m.version}`);
    }
    validateConfig(body.config);
    if (body.region && body.region !== m.region) throw E.bad('cannot change the region of a machine');
    const wasStarted = m.state === 'started' || m.state === 'starting' || m.launching;
    m.config = normaliseConfig(body.config);
    m.version = ids.ulid();
    m.versions.unshift({ version: m.version, user_config: m.config });
    m.imageRef = parseImage(m.config.image);
    if (body.name) m.name = body.name;
    m.launching = false;
    m.setState('updating');
    m.addEvent('update', 'updating', 'user');
    const json = m.toJSON({});
    m.enqueue(() => m.updateNow(wasStarted, !!body.skip_launch));
    return [200, json];
  });

  route('DELETE', rx('\\/([^/]+)'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    checkLease(m, req);
    const force = truthy(url.searchParams.get('force')) || truthy(url.searchParams.get('kill'));
    const atRest = ['stopped', 'suspended', 'failed', 'created'].includes(m.state) && !m.launching;
    if (!force && !atRest) {
      throw E.precondition('unable to destroy machine, not currently stopped, suspended, failed or created');
    }
    if (m.state === 'destroying') return [200, { ok: true }];
    m.launching = false;
    if (force && m.run) m.run.kill();
    m.setState('destroying');
    ctx.track(m.enqueue(() => m.destroyNow()));
    return [200, { ok: true }];
  });

  route('POST', rx('\\/([^/]+)\\/start'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    checkLease(m, req);
    const prev = m.state;
    if (m.launching) throw E.precondition("unable to start machine from current state: 'created'");
    if (prev === 'started' || prev === 'starting') return [200, { previous_state: prev, migrated: false, new_host: '' }];
    if (prev === 'updating' || prev === 'replacing') throw E.precondition('machine getting replaced, refusing to start');
    if (!['stopped', 'created', 'suspended', 'failed'].includes(prev)) {
      throw E.precondition(`unable to start machine from current state: '${prev}'`);
    }
    m.retries = 0;
    m.setState('starting');
    if (prev === 'suspended') m.enqueue(() => m.resumeNow());
    else m.enqueue(() => m.boot());
    return [200, { previous_state: prev, migrated: false, new_host: '' }];
  });

  route('POST', rx('\\/([^/]+)\\/stop'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    if (Array.isArray(body)) throw new HttpError(400, 'json: cannot unmarshal array into Go value of type main.stopRequest');
    if (body != null && !isObject(body)) throw new HttpError(400, 'json: cannot unmarshal into Go value of type main.stopRequest');
    checkLease(m, req);
    const b = body || {};
    if (b.signal != null && !signalName(b.signal, STOP_SIGNALS)) throw E.bad(`invalid signal ${JSON.stringify(b.signal)}`);
    if (b.timeout != null && parseDuration(b.timeout) == null) throw E.bad(`invalid timeout ${JSON.stringify(b.timeout)}`);
    if (m.state === 'created' || m.launching) throw E.precondition("unable to stop machine from current state: 'created'");
    if (m.state === 'stopped' || m.state === 'failed') return [200, { ok: true }];
    if (!['started', 'starting', 'suspended', 'stopping', 'updating'].includes(m.state)) {
      throw E.precondition(`unable to stop machine from current state: '${m.state}'`);
    }
    const { signal, timeoutMs } = m.stopParams(b.signal, b.timeout);
    m.setState('stopping');
    m.enqueue(() => m.stopNow(signal, timeoutMs));
    return [200, { ok: true }];
  });

  route('POST', rx('\\/([^/]+)\\/suspend'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    checkLease(m, req);
    if (m.state === 'suspended') return [200, { ok: true }];
    if (m.state !== 'started') throw E.precondition(`unable to suspend machine from current state: '${m.state}'`);
    m.setState('suspending');
    m.enqueue(() => m.suspendNow());
    return [200, { ok: true }];
  });

  route('POST', rx('\\/([^/]+)\\/restart'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    checkLease(m, req);
    const q = url.searchParams;
    const sig = q.get('signal');
    if (sig && !signalName(sig, STOP_SIGNALS)) throw E.bad(`invalid signal ${JSON.stringify(sig)}`);
    const to = q.get('timeout');
    if (to && parseDuration(/^\d+$/.test(to) ? `${to}s` : to) == null) throw E.bad(`invalid timeout ${JSON.stringify(to)}`);
    if (m.state !== 'started') throw E.precondition(`unable to restart machine from current state: '${m.state}'`);
    const { signal, timeoutMs } = m.stopParams(sig, to && /^\d+$/.test(to) ? `${to}s` : to);
    m.setState('restarting');
    m.addEvent('restart', 'restarting', 'user');
    m.enqueue(async () => {
      await m.stopNow(signal, timeoutMs);
      m.retries = 0;
      await m.boot();
    });
    return [200, { ok: true }];
  });

  route('POST', rx('\\/([^/]+)\\/signal'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    if (!isObject(body)) throw E.bad('signal is required');
    const sig = signalName(body.signal, SIGNALS);
    if (!sig) throw E.bad(`invalid signal ${JSON.stringify(body.signal)}`);
    if (m.state !== 'started' || !m.run) throw E.precondition(`unable to signal machine in state '${m.state}'`);
    m.run.signalMain(sig);
    return [200, { ok: true }];
  });

  route('GET', rx('\\/([^/]+)\\/wait'), async (req, url, body, [appName, id], res) => {
    const m = getMachine(appName, id);
    const q = url.searchParams;
    const states = q.getAll('state').flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
    if (!states.length) states.push('started');
    for (const s of states) if (!WAIT_STATES.has(s)) throw E.bad(`invalid state ${JSON.stringify(s)}`);
    let timeoutS = 60;
    const t = q.get('timeout');
    if (t != null && t !== '') {
      const ms = /^-?\d+$/.test(t) ? Number(t) * 1000 : parseDuration(t);
      if (ms == null || ms < 1000 || ms > 60000) throw E.bad('timeout must be between 1 and 60 seconds');
      timeoutS = ms / 1000;
    }
    const version = q.get('version') || q.get('instance_id');
    if (states.includes('stopped') && !version) throw E.bad('instance_id required when waiting for stopped machine');
    if (version && version !== m.version) {
      if (m.versions.some((v) => v.version === version)) {
        throw E.precondition(`machine ${m.id} version ${version} currently replaced`);
      }
      throw E.notFound('machine version');
    }
    if (m.state === 'destroyed' && !states.includes('destroyed') && !states.includes('settled')) throw E.notFound('machine');
    const matches = (s) => states.includes(s) || (states.includes('settled') && ['started', 'stopped', 'suspended', 'failed', 'destroyed'].includes(s) && !(s === 'created'));
    const { promise, cancel } = m.waitFor(timeoutS * 1000, matches);
    const onClose = () => cancel('closed');
    res.once('close', onClose);
    const r = await promise;
    res.off('close', onClose);
    if (r === 'closed') return null;
    if (r === 'timeout') {
      throw new HttpError(408, `deadline_exceeded: machine failed to reach desired state, ${states.join(', ')}, currently ${m.state}`);
    }
    if (r === 'gone') throw E.notFound('machine');
    return [200, { ok: true, state: r.state, version: m.version, event_id: m.lastEventId }];
  });

  route('POST', rx('\\/([^/]+)\\/exec'), async (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    if (!isObject(body)) throw E.bad('invalid request body');
    checkLease(m, req);
    let argv;
    if (Array.isArray(body.command) && body.command.length) {
      if (!body.command.every((x) => typeof x === 'string')) throw E.bad('command must be an array of strings');
      argv = body.command;
    } else if (typeof body.cmd === 'string' && body.cmd.trim()) {
      argv = splitCommand(body.cmd);
    } else {
      throw E.bad('command is required');
    }
    if (body.stdin != null && typeof body.stdin !== 'string') throw E.bad('stdin must be a string');
    let timeoutS = 30;
    if (body.timeout != null) {
      if (!(Number.isInteger(body.timeout) && body.timeout > 0)) throw E.bad('timeout must be a positive number of seconds');
      timeoutS = body.timeout;
    }
    if (m.state !== 'started' || !m.run || !m.run.started) {
      throw E.precondition(`machine ${m.id} is not started (currently ${m.state})`);
    }
    const r = await m.run.exec(argv, { env: m.env(), stdin: body.stdin, timeoutMs: timeoutS * 1000 });
    if (r.timedOut) throw new HttpError(408, 'deadline_exceeded: command timed out');
    const out = { exit_code: r.exit_code, exit_signal: r.exit_signal, stdout: r.stdout, stderr: r.stderr };
    return [200, out];
  });

  route('GET', rx('\\/([^/]+)\\/events'), (req, url, body, [appName, id]) => {
    const m = getMachine(appName, id);
    let limit = 20;
    const l = url.searchParams.get('limit');
    if (l != null) {
      limit = Number(l);
      if (!Number.isInteger(limit) || limit < 1) throw E.bad('invalid limit');
      limit = Math.min(limit, 50);
    }
    return [200, m.events.slice(0, limit)];
  });

  route('GET', rx('\\/([^/]+)\\/versions'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    return [200, m.versions.map((v) => ({ version: v.version, user_config: v.user_config }))];
  });

  route('GET', rx('\\/([^/]+)\\/ps'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    if (m.state !== 'started' || !m.run) throw E.precondition(`machine ${m.id} is not started (currently ${m.state})`);
    return [200, m.run.ps()];
  });

  for (const [verb, value] of [['cordon', true], ['uncordon', false]]) {
    route('POST', rx(`\\/([^/]+)\\/${verb}`), (req, url, body, [appName, id]) => {
      const m = liveMachine(appName, id);
      checkLease(m, req);
      m.cordoned = value;
      return [200, { ok: true }];
    });
  }

  route('GET', rx('\\/([^/]+)\\/memory'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    const limit = (m.config.guest && m.config.guest.memory_mb) || 256;
    let used = 0;
    const cg = m.run && m.run.cg && m.run.cg.memory;
    if (cg) {
      try { used = Number(require('fs').readFileSync(`${cg}/memory.usage_in_bytes`, 'utf8')) / 1048576; } catch (_) { /* none */ }
    }
    return [200, { limit_mb: limit, available_mb: Math.max(0, Math.round(limit - used)) }];
  });

  /* ---- leases ---- */
  const leaseEnvelope = (l) => ({ status: 'success', data: { nonce: l.nonce, expires_at: l.expires_at,
    owner: l.owner, description: l.description, version: l.version } });

  route('GET', rx('\\/([^/]+)\\/lease'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    const l = m.leaseValid();
    if (!l) throw E.notFound('lease');
    return [200, leaseEnvelope(l)];
  });

  route('POST', rx('\\/([^/]+)\\/lease'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    if (body != null && !isObject(body)) throw E.bad('invalid request body');
    const b = body || {};
    let ttl = b.ttl != null ? b.ttl : url.searchParams.get('ttl');
    ttl = ttl == null || ttl === '' ? 30 : Number(ttl);
    if (!Number.isInteger(ttl) || ttl < 1) throw E.bad('ttl must be a positive number of seconds');
    const held = m.leaseValid();
    const given = req.headers['fly-machine-lease-nonce'];
    if (held && given !== held.nonce) {
      throw E.aborted(`lease currently held by ${held.owner}, expires at ${isoSeconds(held.expires_at * 1000)}`);
    }
    if (!held && given) throw E.notFound('lease');
    const expires = Math.floor(Date.now() / 1000) + ttl;
    if (held) {
      held.expires_at = expires;
      if (b.description != null) held.description = String(b.description);
      return [201, leaseEnvelope(held)];
    }
    m.lease = { nonce: ids.nonce(), expires_at: expires, owner: LEASE_OWNER,
      description: b.description != null ? String(b.description) : '', version: ids.ulid() };
    return [201, leaseEnvelope(m.lease)];
  });

  route('DELETE', rx('\\/([^/]+)\\/lease'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    const given = req.headers['fly-machine-lease-nonce'];
    if (!given) throw E.bad('fly-machine-lease-nonce header is required');
    const held = m.leaseValid();
    if (!held || held.nonce !== given) throw E.notFound('lease');
    m.lease = null;
    return [200, { status: 'success', data: { ok: true } }];
  });

  /* ---- metadata ---- */
  route('GET', rx('\\/([^/]+)\\/metadata'), (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    return [200, { ...(m.config.metadata || {}) }];
  });

  const patchMetadata = (req, url, body, [appName, id]) => {
    const m = liveMachine(appName, id);
    if (!isObject(body) || (body.metadata != null && !isObject(body.metadata))) throw E.bad('metadata must be an object');
    if (body.machine_version && body.machine_version !== m.version) {
      throw E.precondition(`machine version ${body.machine_version} does not match current version ${m.version}`);
    }
    const md = { ...(m.config.metadata || {}) };
    for (const [k, v] of Object.entries(body.metadata || {})) {
      if (v === null || v === '') delete md[k];
      else if (typeof v !== 'string') throw E.bad(`metadata value for ${k} must be a string`);
      else md[k] = v;
    }
    m.config.metadata = md;
    return [204, null];
  };
  route('PATCH', rx('\\/([^/]+)\\/metadata'), patchMetadata);
  route('PUT', rx('\\/([^/]+)\\/metadata'), patchMetadata);

  route('GET', rx('\\/([^/]+)\\/metadata\\/([^/]+)'), (req, url, body, [appName, id, key]) => {
    const m = liveMachine(appName, id);
    const md = m.config.metadata || {};
    if (!Object.prototype.hasOwnProperty.call(md, key)) throw E.notFound('metadata key');
    return [200, { value: md[key] }];
  });

  route('POST', rx('\\/([^/]+)\\/metadata\\/([^/]+)'), (req, url, body, [appName, id, key]) => {
    const m = liveMachine(appName, id);
    if (!isObject(body) || typeof body.value !== 'string') throw E.bad('value must be a string');
    m.config.metadata = { ...(m.config.metadata || {}), [key]: body.value };
    return [204, null];
  });

  route('DELETE', rx('\\/([^/]+)\\/metadata\\/([^/]+)'), (req, url, body, [appName, id, key]) => {
    const m = liveMachine(appName, id);
    const md = { ...(m.config.metadata || {}) };
    delete md[key];
    m.config.metadata = md;
    return [204, null];
  });

  /* ---- dispatch ---- */
  const send = (res, status, body, headers = {}) => {
    if (res.headersSent || res.destroyed) return;
    const h = { 'fly-request-id': res.flyRequestId, ...headers };
    if (body === null || body === undefined) {
      res.writeHead(status, { ...h, 'content-length': 0 });
      res.end();
      return;
    }
    const data = Buffer.from(JSON.stringify(body));
    res.writeHead(status, { ...h, 'content-type': 'application/json; charset=utf-8', 'content-length': data.length });
    res.end(data);
  };

  const authorised = (req) => {
    const h = req.headers.authorization;
    if (!h) return false;
    const m = /^\s*(Bearer|FlyV1)\s+(.+?)\s*$/i.exec(h);
    if (!m) return false;
    const want = Buffer.from(token);
    return m[2].split(',').some((t) => {
      const got = Buffer.from(t.trim());
      return got.length === want.length && crypto.timingSafeEqual(got, want);
    });
  };

  const readBody = (req) => new Promise((resolve, reject) => {
    const chunks = [];
    let len = 0;
    req.on('data', (c) => {
      len += c.length;
      if (len > 64 * 1024 * 1024) { reject(new HttpError(413, 'invalid_argument: request body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });

  /* Answers for an injected fault; false when the fault only adds latency. */
  async function applyFault(fault, res) {
    if (fault.latencyMs) await new Promise((r) => setTimeout(r, fault.latencyMs));
    if (fault.drop) { res.socket.destroy(); return true; }
    if (!fault.status) return false;
    const headers = {};
    if (fault.retryAfter != null) headers['retry-after'] = String(fault.retryAfter);
    const b = fault.body !== undefined ? fault.body : { error: `injected fault: status ${fault.status}` };
    if (typeof b === 'string') {
      const data = Buffer.from(b);
      res.writeHead(fault.status, { 'fly-request-id': res.flyRequestId, 'content-type': 'application/json; charset=utf-8', 'content-length': data.length, ...headers });
      res.end(data);
    } else {
      send(res, fault.status, b, headers);
    }
    return true;
  }

  return async function handle(req, res) {
    stats.requests++;
    res.flyRequestId = ids.requestId(store.region);
    try {
      const url = new URL(req.url, 'http://fly-local');
      const pathname = url.pathname.replace(/\/+$/, '') || '/';
      const raw = await readBody(req);
      const fault = faults.take(req.method, pathname);
      if (fault && !fault.afterHandling && await applyFault(fault, res)) return;
      let match = null;
      let methodSeen = false;
      for (const r of routes) {
        const mm = r.pattern.exec(pathname);
        if (!mm) continue;
        methodSeen = true;
        if (r.method === req.method) { match = { r, params: mm.slice(1).map(decodeURIComponent) }; break; }
      }
      if (!match) {
        if (!authorised(req)) throw new HttpError(401, 'Authenticate: token validation error');
        throw methodSeen ? new HttpError(405, 'method not allowed') : new HttpError(404, 'not_found: no route for this path');
      }
      if (!match.r.opts.noAuth && !authorised(req)) throw new HttpError(401, 'Authenticate: token validation error');
      let body;
      if (raw.length) {
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch (e) {
          throw new HttpError(400, `invalid_argument: invalid JSON body: ${e.message}`);
        }
      }
      const out = await match.r.handler(req, url, body, match.params, res);
      if (out === null) return; /* client went away */
      /* afterHandling: the request took effect, then its reply is lost. */
      if (fault && fault.afterHandling && await applyFault(fault, res)) return;
      send(res, out[0], out[1], out[2]);
    } catch (e) {
      if (e instanceof HttpError) {
        send(res, e.status, e.body);
      } else {
        if (!ctx.quiet) process.stderr.write(`fly-local: ${e && e.stack}\n`);
        send(res, 500, { error: `unknown: ${e && e.message}`, status: 'unknown' });
      }
    }
  };
}

module.exports = { createApi, splitCommand, REGIONS };
