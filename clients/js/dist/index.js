// reco-client: a fetch-based client for Reco (browsers and Node 20+), ESM, no runtime dependencies.
//
// Hand-written JavaScript (there is no build step): `dist/` is what the package ships, with `index.d.ts`
// beside it. The wire format is the server's (snake_case JSON); this module speaks camelCase to its callers
// for recommendation answers and events, and hands catalog and user records back as the server sends them.

/** What an event may carry, in the client's spelling, and its name on the wire (the server's `EventIn`). */
const EVENT_FIELDS = {
  eventId: "event_id",
  userId: "user_id",
  itemId: "item_id",
  type: "type",
  value: "value",
  timestamp: "timestamp",
  recommendationId: "recommendation_id",
  items: "items",
};
const MAX_BATCH = 5000; // the contract's cap on events (or items) in one request
const RETRY_STATUSES = new Set([429, 502, 503, 504]);
const BEACON_BYTES = 60000; // browsers refuse beacons past about 64 KiB in flight

/** An error from the server (`status`, `code`, `message`, `details` from its error body) or from the
 * connection (`status` 0, `code` "connection_error" or "timeout"). */
export class RecoError extends Error {
  constructor(message, { status = 0, code = "error", details = [], retryAfter = null, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = "RecoError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
  }

  /** Whether sending the same request again may succeed (429, 502, 503, 504, connection errors, timeouts). */
  get retryable() {
    return this.status === 0 || RETRY_STATUSES.has(this.status);
  }
}

function newEventId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID().replaceAll("-", "");
  let out = "";
  for (let i = 0; i < 32; i += 1) out += Math.floor(Math.random() * 16).toString(16);
  return out;
}

/** The wire form of one event (snake_case), checked, with an `event_id` assigned where it had none so that
 * a resend is recognised by the server as the same event. Throws a TypeError naming the field. */
export function toWireEvent(event, where = "") {
  if (event === null || typeof event !== "object" || Array.isArray(event)) {
    throw new TypeError(`${where || "event"}: an event is an object`);
  }
  const at = (field) => (where ? `${where}.${field}` : field);
  const wire = {};
  for (const [key, value] of Object.entries(event)) {
    const name = EVENT_FIELDS[key] ?? (Object.values(EVENT_FIELDS).includes(key) ? key : null);
    if (!name) {
      throw new TypeError(`${at(key)}: unknown field; an event may carry ${Object.keys(EVENT_FIELDS).join(", ")}`);
    }
    if (value === undefined || value === null) continue;
    wire[name] = value;
  }
  for (const [field, name] of [["userId", "user_id"], ["type", "type"]]) {
    if (typeof wire[name] !== "string" || !wire[name]) throw new TypeError(`${at(field)}: required (a non-empty string)`);
  }
  if (wire.timestamp instanceof Date) wire.timestamp = wire.timestamp.toISOString();
  if (wire.items !== undefined) {
    if (!Array.isArray(wire.items)) throw new TypeError(`${at("items")}: a list of item ids`);
    wire.items = wire.items.map((it) => (typeof it === "string" ? it : it?.itemId ?? it?.item_id));
  }
  if (!wire.event_id) wire.event_id = newEventId();
  return wire;
}

const camelKey = (key) => key.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
const snakeKey = (key) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

function camel(value) {
  if (Array.isArray(value)) return value.map(camel);
  if (value === null || typeof value !== "object") return value;
  const out = {};
  for (const [key, v] of Object.entries(value)) out[camelKey(key)] = camel(v);
  return out;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null) continue;
    if (Array.isArray(value)) {
      if (value.length) q.set(snakeKey(key), value.join(","));
    } else if (typeof value === "object") {
      q.set(snakeKey(key), JSON.stringify(value)); // rules=: URL-encoded JSON
    } else {
      q.set(snakeKey(key), String(value));
    }
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

const seg = (id, what) => {
  if (typeof id !== "string" || !id) throw new TypeError(`${what}: required (a non-empty string)`);
  return encodeURIComponent(id);
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function retryAfterMs(header) {
  if (!header) return null;
  const seconds = Number(header);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null; // an HTTP date: the backoff
}

/** The Reco client. One instance per page or process; calls may run concurrently. */
export class Reco {
  #queue = [];
  #sending = null;
  #timer = null;
  #closed = false;
  #onHide = null;

  /**
   * @param {object} options
   * @param {string} options.baseUrl  the service, e.g. "http://127.0.0.1:8000"
   * @param {string} options.key      an API key; in a browser, a publishable key (`pk_…`)
   * @param {string} [options.userToken]  sent as `X-Reco-User-Token` (when the service requires one)
   * @param {number} [options.timeoutMs=10000]  per attempt
   * @param {number} [options.retries=5]  retries after the first try (429, 502, 503, 504, connection errors)
   * @param {number} [options.backoffMs=200]  base of the exponential backoff (full jitter, capped at 10 s)
   * @param {number} [options.batchSize=500]  queued events go out once this many are queued …
   * @param {number} [options.flushIntervalMs=1000]  … or this long after the oldest was queued
   * @param {Function} [options.fetch]  a fetch implementation (default: the global one)
   * @param {Function} [options.onError]  told of a queued batch that could not be sent
   * @param {boolean} [options.beacon=true]  in a browser, hand queued events to `navigator.sendBeacon` when
   *   the page is hidden or closed (publishable keys only: a beacon cannot set headers, so the key goes in
   *   the URL, which the server accepts only for publishable keys)
   */
  constructor({
    baseUrl,
    key,
    userToken = null,
    timeoutMs = 10000,
    retries = 5,
    backoffMs = 200,
    batchSize = 500,
    flushIntervalMs = 1000,
    fetch: fetchImpl = null,
    onError = null,
    beacon = true,
  } = {}) {
    if (typeof baseUrl !== "string" || !/^https?:\/\//.test(baseUrl)) {
      throw new TypeError("baseUrl: required, an http(s) URL such as http://127.0.0.1:8000");
    }
    if (typeof key !== "string" || !key) throw new TypeError("key: required (an API key)");
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH) {
      throw new TypeError(`batchSize: an integer from 1 to ${MAX_BATCH}`);
    }
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.key = key;
    this.userToken = userToken;
    this.timeoutMs = timeoutMs;
    this.retries = retries;
    this.backoffMs = backoffMs;
    this.batchSize = batchSize;
    this.flushIntervalMs = flushIntervalMs;
    this.onError = onError;
    this._fetch = fetchImpl || ((...args) => globalThis.fetch(...args));
    /** Counters of the batcher: batches acknowledged, events accepted / duplicates / rejected, failed sends,
     * events dropped (refused by the server for good: a 4xx other than 429). */
    this.stats = { batches: 0, accepted: 0, duplicates: 0, rejected: 0, errors: 0, dropped: 0, beacons: 0 };
    /** The last error of a queued batch, or null. */
    this.lastError = null;
    if (beacon && key.startsWith("pk_") && typeof document !== "undefined" && typeof navigator !== "undefined") {
      this.#onHide = () => {
        if (document.visibilityState === "hidden") this.#beacon();
      };
      document.addEventListener("visibilitychange", this.#onHide);
      globalThis.addEventListener?.("pagehide", this.#onHide);
    }
  }

  // ---- transport ----

  async #request(method, path, { params, body } = {}) {
    const url = `${this.baseUrl}${path}${query(params)}`;
    const headers = { Authorization: `Bearer ${this.key}`, Accept: "application/json" };
    if (this.userToken) headers["X-Reco-User-Token"] = this.userToken;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body); // once: every attempt sends the same bytes (the same event ids)
    }
    for (let attempt = 0; ; attempt += 1) {
      let error;
      try {
        return await this.#once(url, init);
      } catch (e) {
        error = e;
      }
      if (!(error instanceof RecoError) || !error.retryable || attempt >= this.retries) throw error;
      let wait = Math.random() * Math.min(10000, this.backoffMs * 2 ** attempt);
      if (error.retryAfter !== null) wait = Math.max(wait, Math.min(10000, error.retryAfter));
      await sleep(wait);
    }
  }

  async #once(url, init) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    let response;
    try {
      response = await this._fetch(url, { ...init, signal: controller.signal });
    } catch (e) {
      const timedOut = controller.signal.aborted;
      throw new RecoError(
        timedOut ? `${init.method} ${url}: no answer in ${this.timeoutMs} ms` : `${init.method} ${url}: ${e?.message || e}`,
        { status: 0, code: timedOut ? "timeout" : "connection_error", cause: e },
      );
    } finally {
      clearTimeout(timer);
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (response.ok) return data;
    const err = data?.error || {};
    const details = Array.isArray(err.details) ? err.details : [];
    throw new RecoError(err.message || `${init.method} ${url}: HTTP ${response.status}`, {
      status: response.status,
      code: err.code || `http_${response.status}`,
      details,
      retryAfter: retryAfterMs(response.headers.get("Retry-After")),
    });
  }

  // ---- recommendations (answers in camelCase: items[].itemId, recommendationId, …) ----

  /** Top-k for a known user. Options: k, category, exclude (ids), includeSeen, explain, placement, filter,
   * rules (an object: sent as URL-encoded JSON). */
  async recommend(userId, options = {}) {
    return camel(await this.#request("GET", `/v1/users/${seg(userId, "userId")}/recommendations`, { params: { k: 10, ...options } }));
  }

  /** Top-k for an anonymous session from the items it has seen (most recent last). */
  async recommendSession(recentItems, options = {}) {
    const body = { recent_items: [...recentItems], k: 10 };
    for (const [key, value] of Object.entries(options)) if (value !== undefined) body[snakeKey(key)] = value;
    return camel(await this.#request("POST", "/v1/recommendations", { body }));
  }

  /** Items like `itemId`. Options: k, category, placement, filter, rules. */
  async similar(itemId, options = {}) {
    return camel(await this.#request("GET", `/v1/items/${seg(itemId, "itemId")}/similar`, { params: { k: 10, ...options } }));
  }

  /** The popular list. Options: k, category, window ("1h", "24h", "7d", …). */
  async popular(options = {}) {
    return camel(await this.#request("GET", "/v1/popular", { params: { k: 10, ...options } }));
  }

  // ---- catalog and users (records as the server sends them: item_id, latest_events, …) ----

  putItem(itemId, fields = {}) {
    return this.#request("PUT", `/v1/items/${seg(itemId, "itemId")}`, { body: fields });
  }

  /** Upsert up to 5,000 items in one request: [{item_id, title, …}]. */
  upsertItems(items) {
    if (!Array.isArray(items) || items.length > MAX_BATCH) throw new TypeError(`items: a list of at most ${MAX_BATCH}`);
    return this.#request("POST", "/v1/items", { body: { items } });
  }

  getItem(itemId) {
    return this.#request("GET", `/v1/items/${seg(itemId, "itemId")}`);
  }

  /** One page of the catalog. Options: category, available, limit, cursor. */
  listItems(options = {}) {
    return this.#request("GET", "/v1/items", { params: options });
  }

  /** Every item, following the cursor: `for await (const item of reco.items()) …`. */
  async *items(options = {}) {
    let cursor = options.cursor ?? null;
    do {
      const page = await this.listItems({ ...options, cursor });
      yield* page.items;
      cursor = page.next_cursor;
    } while (cursor);
  }

  deleteItem(itemId) {
    return this.#request("DELETE", `/v1/items/${seg(itemId, "itemId")}`);
  }

  putUser(userId, attributes = {}) {
    return this.#request("PUT", `/v1/users/${seg(userId, "userId")}`, { body: { attributes } });
  }

  getUser(userId) {
    return this.#request("GET", `/v1/users/${seg(userId, "userId")}`);
  }

  /** Erase a user and their events (admin). */
  deleteUser(userId) {
    return this.#request("DELETE", `/v1/users/${seg(userId, "userId")}`);
  }

  // ---- admin ----

  retrain({ reason, mode, timeBudgetS } = {}) {
    const body = {};
    if (reason !== undefined) body.reason = reason;
    if (mode !== undefined) body.mode = mode;
    if (timeBudgetS !== undefined) body.time_budget_s = timeBudgetS;
    return this.#request("POST", "/v1/admin/retrain", { body });
  }

  job(jobId) {
    return this.#request("GET", `/v1/admin/jobs/${seg(jobId, "jobId")}`);
  }

  /** Poll a job until it has succeeded or failed (or `timeoutMs` passes: a RecoError with code "timeout"). */
  async waitForJob(jobId, { timeoutMs = 600000, pollMs = 500 } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = await this.job(jobId);
      if (job.status === "succeeded" || job.status === "failed") return job;
      if (Date.now() > deadline) {
        throw new RecoError(`job ${jobId}: still ${job.status} after ${timeoutMs} ms`, { code: "timeout" });
      }
      await sleep(pollMs);
    }
  }

  models() {
    return this.#request("GET", "/v1/admin/models");
  }

  activate(version) {
    return this.#request("POST", `/v1/admin/models/${seg(version, "version")}/activate`);
  }

  // ---- events ----

  /** Send events now (not queued), in requests of at most 5,000; the summed `{accepted, duplicates,
   * rejected}`. Every event gets its `eventId` before the first try, so a retried request is stored once. */
  async sendEvents(events) {
    const wire = [...events].map((e, n) => toWireEvent(e, `events[${n}]`));
    const total = { accepted: 0, duplicates: 0, rejected: [] };
    for (let start = 0; start < wire.length; start += MAX_BATCH) {
      const result = await this.#request("POST", "/v1/events", { body: { events: wire.slice(start, start + MAX_BATCH) } });
      total.accepted += result.accepted;
      total.duplicates += result.duplicates;
      for (const r of result.rejected || []) total.rejected.push({ ...r, index: r.index + start });
    }
    return total;
  }

  /** Queue one event (batched; see `batchSize`, `flushIntervalMs`); returns its eventId. */
  track(event) {
    if (this.#closed) throw new RecoError("the client is closed: create a new one", { code: "closed" });
    const wire = toWireEvent(event);
    this.#queue.push(wire);
    if (this.#queue.length >= this.batchSize) this.#kick(false);
    else if (!this.#timer && !this.#sending) this.#arm();
    return wire.event_id;
  }

  /** Queue an impression: the items of an answer as shown to `userId` (stored once per answer and item). */
  impression(userId, answer) {
    return this.track({ userId, type: "impression", recommendationId: answer.recommendationId, items: answer.items });
  }

  /** Queue a click on `itemId` of the answer `recommendationId` (attribution); returns its eventId. */
  click(userId, itemId, recommendationId = null, type = "click") {
    return this.track({ userId, itemId, type, recommendationId });
  }

  /** Events queued and not yet acknowledged by the server. */
  get queued() {
    return this.#queue.length;
  }

  /** Send everything queued; rejects if a batch could not be sent (it stays queued, with the same ids). */
  async flush() {
    this.#disarm();
    while (this.#sending) await this.#sending.catch(() => {});
    if (!this.#queue.length) return;
    this.#sending = this.#drain(true);
    try {
      await this.#sending;
    } finally {
      this.#sending = null;
      if (this.#queue.length && !this.#closed) this.#arm();
    }
  }

  /** Flush, then stop the timer and the page listeners. */
  async close() {
    try {
      await this.flush();
    } finally {
      this.#closed = true;
      this.#disarm();
      if (this.#onHide) {
        document.removeEventListener("visibilitychange", this.#onHide);
        globalThis.removeEventListener?.("pagehide", this.#onHide);
      }
    }
  }

  #arm() {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#kick(true);
    }, this.flushIntervalMs);
  }

  #disarm() {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #kick(all) {
    if (this.#sending) return;
    this.#disarm();
    this.#sending = this.#drain(all)
      .catch((e) => this.onError?.(e))
      .finally(() => {
        this.#sending = null;
        if (this.#queue.length && !this.#closed && !this.#timer) this.#arm();
      });
  }

  // one batch at a time, in order; a batch leaves the queue only once acknowledged (or refused for good)
  async #drain(all) {
    while (this.#queue.length && (all || this.#queue.length >= this.batchSize)) {
      const n = Math.min(this.batchSize, this.#queue.length);
      const batch = this.#queue.slice(0, n);
      let result;
      try {
        result = await this.#request("POST", "/v1/events", { body: { events: batch } });
      } catch (e) {
        this.stats.errors += 1;
        this.lastError = e;
        if (e instanceof RecoError && !e.retryable && e.status >= 400 && e.status < 500) {
          this.#queue.splice(0, n); // bad as a whole (key, scope, shape): resending cannot help
          this.stats.dropped += n;
        }
        throw e;
      }
      this.#queue.splice(0, n);
      this.stats.batches += 1;
      this.stats.accepted += result.accepted;
      this.stats.duplicates += result.duplicates;
      this.stats.rejected += (result.rejected || []).length;
    }
  }

  // the page is going away: hand what is queued to the browser, which sends it even after the page closes
  #beacon() {
    if (!this.#queue.length || typeof navigator.sendBeacon !== "function") return;
    let url = `${this.baseUrl}/v1/events?key=${encodeURIComponent(this.key)}`;
    if (this.userToken) url += `&user_token=${encodeURIComponent(this.userToken)}`;
    while (this.#queue.length) {
      let n = Math.min(this.batchSize, this.#queue.length);
      let body = JSON.stringify({ events: this.#queue.slice(0, n) });
      while (body.length > BEACON_BYTES && n > 1) {
        n = Math.ceil(n / 2);
        body = JSON.stringify({ events: this.#queue.slice(0, n) });
      }
      // text/plain keeps it a "simple" request (no preflight); the server reads the body as JSON
      if (!navigator.sendBeacon(url, new Blob([body], { type: "text/plain" }))) return; // stays queued
      this.#queue.splice(0, n);
      this.stats.beacons += 1;
    }
  }
}

export default Reco;
