// Type declarations for reco-client (dist/index.js).

export interface RecoOptions {
  /** The service, e.g. "http://127.0.0.1:8000". */
  baseUrl: string;
  /** An API key; in a browser, a publishable key (`pk_…`). */
  key: string;
  /** Sent as `X-Reco-User-Token` when the service requires user tokens. */
  userToken?: string | null;
  /** Per attempt (default 10000). */
  timeoutMs?: number;
  /** Retries after the first try on 429, 502, 503, 504 and connection errors (default 5). */
  retries?: number;
  /** Base of the exponential backoff with full jitter, capped at 10 s (default 200). */
  backoffMs?: number;
  /** Queued events go out once this many are queued (default 500, at most 5000) … */
  batchSize?: number;
  /** … or this long after the oldest was queued (default 1000). */
  flushIntervalMs?: number;
  fetch?: typeof fetch;
  /** Told of a queued batch that could not be sent. */
  onError?: ((error: RecoError) => void) | null;
  /** In a browser with a publishable key: hand queued events to `navigator.sendBeacon` when the page hides. */
  beacon?: boolean;
}

export interface RecoErrorDetail {
  loc?: (string | number)[];
  msg?: string;
  [key: string]: unknown;
}

export class RecoError extends Error {
  /** HTTP status; 0 for a connection error or a timeout. */
  status: number;
  /** The server's error code ("validation_error", "not_found", "unavailable", …), "connection_error" or "timeout". */
  code: string;
  details: RecoErrorDetail[];
  /** From `Retry-After`, in milliseconds. */
  retryAfter: number | null;
  readonly retryable: boolean;
}

export interface Event {
  userId: string;
  type: string;
  itemId?: string;
  eventId?: string;
  value?: number;
  timestamp?: string | Date;
  recommendationId?: string;
  /** An impression's items: ids or answer items. */
  items?: (string | { itemId: string })[];
}

export interface WireEvent {
  event_id: string;
  user_id: string;
  type: string;
  item_id?: string;
  value?: number;
  timestamp?: string;
  recommendation_id?: string;
  items?: string[];
}

export function toWireEvent(event: Event, where?: string): WireEvent;

export interface Explanation {
  because: string[];
  rules?: string[] | null;
}

export interface RecommendedItem {
  itemId: string;
  score: number;
  explanation?: Explanation | null;
}

export interface Answer {
  recommendationId: string;
  modelVersion: string | null;
  strategy: string;
  items: RecommendedItem[];
  note?: string | null;
}

export interface Recommendations extends Answer {
  userId: string | null;
  placement?: string | null;
  experiment?: string | null;
  variant?: string | null;
}

export interface Similar extends Answer {
  itemId: string;
  placement?: string | null;
}

export interface Popular extends Answer {
  window: string;
  category: string | null;
}

export interface RecommendOptions {
  k?: number;
  category?: string;
  exclude?: string[];
  includeSeen?: boolean;
  explain?: boolean;
  placement?: string;
  filter?: string;
  rules?: Record<string, unknown> | string;
}

export interface IngestResult {
  accepted: number;
  duplicates: number;
  rejected: { index: number; error: string; loc?: (string | number)[] }[];
}

/** A catalog item, as the server sends it. */
export interface Item {
  item_id: string;
  title: string | null;
  categories: string[];
  tags: string[];
  price: number | null;
  available: boolean;
  published_at: string | null;
  attributes: Record<string, unknown>;
  created_at: string;
  updated_at: string;
}

export interface ItemFields {
  title?: string | null;
  categories?: string[];
  tags?: string[];
  price?: number | null;
  available?: boolean;
  published_at?: string | null;
  attributes?: Record<string, unknown>;
}

export interface ItemPage {
  items: Item[];
  next_cursor: string | null;
}

export interface StoredEvent {
  event_id: string | null;
  item_id: string;
  type: string;
  value: number | null;
  timestamp: string;
}

export interface User {
  user_id: string;
  attributes: Record<string, unknown>;
  created_at: string;
  event_count: number;
  latest_events: StoredEvent[];
}

export interface Job {
  job_id: string;
  status: "queued" | "running" | "succeeded" | "failed" | string;
  progress: number;
  model_version: string | null;
  metrics: Record<string, unknown>;
  error: string | null;
  trigger: string;
  attempts: number;
  created_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  params?: Record<string, unknown>;
}

export interface Model {
  version: string;
  status: string;
  reason: string | null;
  metrics: Record<string, unknown>;
  training_interactions: number | null;
  data: Record<string, unknown>;
  timings: Record<string, unknown>;
  job_id: string | null;
  created_at: string | null;
  activated_at: string | null;
  artifact: boolean;
}

export interface BatcherStats {
  batches: number;
  accepted: number;
  duplicates: number;
  rejected: number;
  errors: number;
  dropped: number;
  beacons: number;
}

export class Reco {
  constructor(options: RecoOptions);
  readonly baseUrl: string;
  readonly stats: BatcherStats;
  lastError: RecoError | null;
  /** Events queued and not yet acknowledged by the server. */
  readonly queued: number;

  recommend(userId: string, options?: RecommendOptions): Promise<Recommendations>;
  recommendSession(recentItems: Iterable<string>, options?: RecommendOptions): Promise<Recommendations>;
  similar(itemId: string, options?: Omit<RecommendOptions, "exclude" | "includeSeen" | "explain">): Promise<Similar>;
  popular(options?: { k?: number; category?: string; window?: string }): Promise<Popular>;

  putItem(itemId: string, fields?: ItemFields): Promise<Item>;
  upsertItems(items: (ItemFields & { item_id: string })[]): Promise<IngestResult>;
  getItem(itemId: string): Promise<Item>;
  listItems(options?: { category?: string; available?: boolean; limit?: number; cursor?: string | null }): Promise<ItemPage>;
  items(options?: { category?: string; available?: boolean; limit?: number; cursor?: string | null }): AsyncGenerator<Item>;
  deleteItem(itemId: string): Promise<null>;
  putUser(userId: string, attributes?: Record<string, unknown>): Promise<User>;
  getUser(userId: string): Promise<User>;
  deleteUser(userId: string): Promise<null>;

  retrain(options?: { reason?: string; mode?: "full" | "incremental"; timeBudgetS?: number }): Promise<Job>;
  job(jobId: string): Promise<Job>;
  waitForJob(jobId: string, options?: { timeoutMs?: number; pollMs?: number }): Promise<Job>;
  models(): Promise<{ active: string | null; models: Model[] }>;
  activate(version: string): Promise<{ version: string; status: string; previous: string | null; serving: string | null }>;

  /** Send now, in requests of at most 5,000 events. */
  sendEvents(events: Iterable<Event>): Promise<IngestResult>;
  /** Queue one event; its eventId. */
  track(event: Event): string;
  impression(userId: string, answer: { recommendationId: string; items: (string | { itemId: string })[] }): string;
  click(userId: string, itemId: string, recommendationId?: string | null, type?: string): string;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export default Reco;
