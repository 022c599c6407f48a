// reco-client against a real `reco serve` started by the test (Node's test runner).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Reco, RecoError, toWireEvent } from "../dist/index.js";
import { ADMIN_KEY, startServer } from "./server.js";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test("catalog, events, recommendations, similar and popular", async () => {
  const reco = new Reco({ baseUrl: server.base, key: ADMIN_KEY, batchSize: 50, flushIntervalMs: 100 });
  for (let n = 0; n < 12; n += 1) {
    const stored = await reco.putItem(`sku-${n}`, { title: `Thing ${n}`, categories: [n % 2 ? "toys" : "games"] });
    assert.equal(stored.item_id, `sku-${n}`);
  }
  const events = [];
  for (let u = 0; u < 20; u += 1) {
    for (let n = 0; n < 5; n += 1) events.push({ eventId: `js-${u}-${n}`, userId: `js-u${u}`, itemId: `sku-${(u + n) % 12}`, type: "view" });
  }
  const result = await reco.sendEvents(events);
  assert.equal(result.accepted, 100);
  const again = await reco.sendEvents(events.slice(0, 10)); // same eventIds: stored once
  assert.equal(again.accepted, 0);
  assert.equal(again.duplicates, 10);

  const answer = await reco.recommend("js-u1", { k: 5, exclude: ["sku-0"] });
  assert.ok(Array.isArray(answer.items));
  assert.ok(answer.recommendationId, "an answer carries its recommendation id");
  for (const it of answer.items) {
    assert.equal(typeof it.itemId, "string");
    assert.equal(typeof it.score, "number");
    assert.notEqual(it.itemId, "sku-0");
  }
  const session = await reco.recommendSession(["sku-1", "sku-2"], { k: 3 });
  assert.equal(session.userId, null);
  const similar = await reco.similar("sku-1", { k: 3 });
  assert.ok(similar.recommendationId);
  const popular = await reco.popular({ k: 3 });
  assert.ok(popular.recommendationId);

  // impressions and clicks carry the recommendation id; batched, flushed on the interval
  reco.impression("js-u1", { recommendationId: answer.recommendationId, items: [{ itemId: "sku-3" }, { itemId: "sku-4" }] });
  const clickId = reco.click("js-u1", "sku-3", answer.recommendationId);
  assert.equal(reco.queued, 2);
  for (let i = 0; i < 100 && reco.queued; i += 1) await new Promise((r) => setTimeout(r, 20));
  await reco.flush();
  assert.equal(reco.queued, 0);
  assert.equal(reco.stats.accepted >= 1, true);
  const user = await reco.getUser("js-u1");
  assert.ok(user.latest_events.some((e) => e.event_id === clickId), "the click is stored");
});

test("batches flush on size and on flush()", async () => {
  const reco = new Reco({ baseUrl: server.base, key: ADMIN_KEY, batchSize: 10, flushIntervalMs: 60000 });
  for (let n = 0; n < 25; n += 1) reco.track({ userId: "js-batch", itemId: "sku-1", type: "view", eventId: `jsb-${n}` });
  for (let i = 0; i < 200 && reco.stats.batches < 2; i += 1) await new Promise((r) => setTimeout(r, 20));
  assert.equal(reco.stats.batches, 2);
  assert.equal(reco.queued, 5);
  await reco.close();
  assert.equal(reco.queued, 0);
  const user = await reco.getUser("js-batch");
  assert.equal(user.event_count, 25);
});

test("errors carry the server's code and message; bad input is refused before sending", async () => {
  const reco = new Reco({ baseUrl: server.base, key: ADMIN_KEY, retries: 0 });
  await assert.rejects(reco.getItem("no-such-item"), (e) => e instanceof RecoError && e.status === 404 && !!e.code);
  await assert.rejects(reco.recommend("u", { k: 0 }), (e) => e instanceof RecoError && e.status === 422 && /k/.test(e.message));
  const anon = new Reco({ baseUrl: server.base, key: "wrong-key-000000000000000000", retries: 0 });
  await assert.rejects(anon.popular(), (e) => e instanceof RecoError && e.status === 401);
  assert.throws(() => toWireEvent({ userId: "u", type: "view", colour: "red" }), /colour: unknown field/);
  assert.throws(() => toWireEvent({ type: "view" }), /userId: required/);
});

test("retries on 503 with the same eventIds, honouring Retry-After", async () => {
  // a fetch that answers 503 twice before passing through: the retried batch is stored once
  let failures = 2;
  const seen = [];
  const flaky = async (url, init) => {
    seen.push(init.body);
    if (failures > 0) {
      failures -= 1;
      return new Response(JSON.stringify({ error: { code: "unavailable", message: "database: down", details: [] } }), {
        status: 503,
        headers: { "Retry-After": "0" },
      });
    }
    return fetch(url, init);
  };
  const reco = new Reco({ baseUrl: server.base, key: ADMIN_KEY, fetch: flaky, backoffMs: 10 });
  const result = await reco.sendEvents([{ userId: "js-retry", itemId: "sku-2", type: "view" }]);
  assert.equal(result.accepted, 1);
  assert.equal(seen.length, 3);
  assert.equal(new Set(seen).size, 1, "every attempt sent the same body (same eventId)");
  const dead = new Reco({ baseUrl: "http://127.0.0.1:1", key: ADMIN_KEY, retries: 1, backoffMs: 1, timeoutMs: 1000 });
  await assert.rejects(dead.popular(), (e) => e instanceof RecoError && e.status === 0);
});
