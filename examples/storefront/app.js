// A tiny storefront on the reco-client JS package: recommendations for a user, similar items for what they
// click, popular items; impressions and clicks are reported with the answer's recommendationId, queued
// events go out in batches (and by sendBeacon when the tab is hidden or closed).
//
// Serve the repository root (python -m http.server 8080) and open
//   http://127.0.0.1:8080/examples/storefront/#api=http://127.0.0.1:8000&key=pk_...&user=u1
// with a publishable key whose origins include http://127.0.0.1:8080 (`make demo` prints one).
import { Reco } from "../../clients/js/dist/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
$("api").value = params.get("api") || "http://127.0.0.1:8000";
$("key").value = params.get("key") || "";
$("user").value = params.get("user") || "u1";

let reco = null;

function status(text, isError = false, state = null) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
  document.body.dataset.state = state || (isError ? "error" : "ok");
}

function shelf(id, answer, userId) {
  const list = $(id);
  list.replaceChildren();
  for (const it of answer.items) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.item = it.itemId;
    button.textContent = it.itemId;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${it.score.toFixed(3)}`;
    button.append(score);
    button.addEventListener("click", () => clicked(userId, it.itemId, answer.recommendationId));
    li.append(button);
    list.append(li);
  }
  list.dataset.recommendationId = answer.recommendationId || "";
  list.dataset.count = String(answer.items.length);
  if (answer.items.length) reco.impression(userId, answer);
}

async function clicked(userId, itemId, recommendationId) {
  reco.click(userId, itemId, recommendationId);
  try {
    shelf("similar", await reco.similar(itemId, { k: 6 }), userId);
    await reco.flush();
    status(`Clicked ${itemId}: sent, similar items shown.`);
  } catch (e) {
    status(`Error: ${e.message}`, true);
  }
}

async function load(event) {
  if (event) event.preventDefault();
  const userId = $("user").value.trim();
  reco = new Reco({ baseUrl: $("api").value.trim(), key: $("key").value.trim(), flushIntervalMs: 2000 });
  status("Loading…", false, "loading");
  try {
    const [mine, popular] = await Promise.all([reco.recommend(userId, { k: 8 }), reco.popular({ k: 6 })]);
    shelf("recommended", mine, userId);
    shelf("popular", popular, userId);
    status(`${mine.items.length} recommendations for ${userId} (${mine.strategy}).`);
  } catch (e) {
    status(`Error: ${e.message}`, true);
  }
}

$("config").addEventListener("submit", load);
if (params.get("key")) load();
