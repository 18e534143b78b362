// The gen playground: a prompt, a sampler chain built from GET /v1/samplers, a constraint, and the
// text streamed from POST /v1/completions with each token coloured by its probability under the
// model; its alternatives say which the constraint masked out and which a filter removed.
// Clicking a token opens the inside view: the model's distribution beside the one the token was
// drawn from (the API's sampled_distribution), and each head's attention over the text before it
// (POST /attention, for exports made with gen export --attention).
// Plain browser JavaScript: no build step, no libraries, nothing fetched but this server's API.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { samplers: [], controller: null };
window.playground = state; // for tests and the curious

// --- the API, with the key when the server asks for one ------------------------------

const KEY_STORAGE = "gen-serve-api-key"; // sessionStorage: kept for this tab only

class NeedsKey extends Error {}

// fetch() on this server's API, sending the API key the user gave (if any). A 401 shows the
// key form and throws NeedsKey: the page waits for a key, then starts again with it.
async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
    askForKey(key ? `That key was refused: ${error.error.message}.` : "This server needs an API key.");
    throw new NeedsKey(error.error.message);
  }
  return response;
}

function askForKey(message) {
  $("#key-message").textContent = message;
  $("#key-form").hidden = false;
  $("#key").focus();
}

function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("#key").value.trim());
  location.reload(); // start again, with the key
}

// --- the sampler chain editor ---------------------------------------------------------

function samplerByName(name) {
  return state.samplers.find((sampler) => sampler.name === name);
}

function addLink(name, values = {}) {
  const link = $("#chain-link").content.firstElementChild.cloneNode(true);
  const select = link.querySelector(".sampler-name");
  for (const sampler of state.samplers) {
    if (sampler.error) continue; // a plugin that cannot load here
    const option = document.createElement("option");
    option.value = sampler.name;
    option.textContent = sampler.provider === "gen" ? sampler.name : `${sampler.name} (${sampler.provider})`;
    select.append(option);
  }
  select.value = name || "top_k";
  select.addEventListener("change", () => { showOptions(link, {}); update(); });
  link.querySelector(".up").addEventListener("click", () => { link.previousElementSibling?.before(link); update(); });
  link.querySelector(".down").addEventListener("click", () => { link.nextElementSibling?.after(link); update(); });
  link.querySelector(".remove").addEventListener("click", () => { link.remove(); update(); });
  $("#chain").append(link);
  showOptions(link, values);
  update();
  return link;
}

function showOptions(link, values) {
  const sampler = samplerByName(link.querySelector(".sampler-name").value);
  const box = link.querySelector(".options");
  box.replaceChildren();
  for (const [name, option] of Object.entries(sampler.options || {})) {
    const label = document.createElement("label");
    label.textContent = name;
    const input = document.createElement("input");
    input.dataset.option = name;
    input.type = option.type === "int" || option.type === "float" ? "number" : "text";
    if (option.type === "float") input.step = "any";
    input.placeholder = option.default === null ? "required" : String(option.default);
    if (values[name] !== undefined) input.value = values[name];
    input.addEventListener("input", update);
    label.append(input);
    box.append(label);
  }
  link.querySelector(".description").textContent =
    `${sampler.description}${sampler.kind === "sampler" ? " (draws the token: must come last)" : ""}`;
}

// The chain as --sampler specs: NAME[:KEY=VALUE,...], options left empty take their defaults.
function chainSpecs() {
  const specs = [];
  const t = Number($("#temperature").value);
  if (t !== 1) specs.push(`temperature:t=${t}`);
  for (const link of document.querySelectorAll("#chain .link")) {
    const name = link.querySelector(".sampler-name").value;
    const options = [...link.querySelectorAll("[data-option]")]
      .filter((input) => input.value.trim() !== "")
      .map((input) => `${input.dataset.option}=${input.value.trim()}`);
    specs.push(options.length ? `${name}:${options.join(",")}` : name);
  }
  return specs;
}

// --- the constraint box ---------------------------------------------------------------

// Per kind: the request's field (runtime/api.py), `gen run`'s option, and an example to start from.
const CONSTRAINTS = {
  regex: { field: (text) => ({ guided_regex: text }), option: "--regex", example: "[A-Z]+" },
  json_schema: { field: (text) => ({ guided_json: text }), option: "--json-schema", file: "schema.json",
    example: '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}' },
  json_object: { field: () => ({ response_format: { type: "json_object" } }), option: "--json-object" },
  grammar: { field: (text) => ({ guided_grammar: text }), option: "--grammar", file: "grammar.lark",
    example: 'start: answer " " NUMBER\nanswer: "yes" | "no"\nNUMBER: /[1-9][0-9]?/' },
};
const CONSTRAINT_PARAMS = ["guided_regex", "guided_json", "guided_grammar", "response_format"];

function chosenConstraint() {
  return CONSTRAINTS[$("#constraint-kind").value] || null; // null: none
}

function showConstraintBox() {
  const constraint = chosenConstraint();
  const box = $("#constraint");
  box.hidden = !constraint || !constraint.example; // any JSON object needs no text
  box.placeholder = constraint?.example || "";
  if (constraint?.example && box.value === "") box.value = constraint.example;
  box.classList.remove("invalid");
  update();
}

function shellQuote(text) {
  return /^[\w.:=,\/+-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

function update() {
  $("#temperature-value").textContent = $("#temperature").value;
  const parts = ["gen run", shellQuote(window.MODEL), "--prompt", shellQuote($("#prompt").value)];
  for (const spec of chainSpecs()) parts.push("--sampler", shellQuote(spec));
  if ($("#seed").value !== "") parts.push("--seed", $("#seed").value);
  parts.push("--max-new-tokens", $("#max-tokens").value);
  const constraint = chosenConstraint();
  if (constraint) parts.push(constraint.option);
  if (constraint?.file) parts.push(constraint.file); // the option reads a file: say which holds the box's text
  else if (constraint?.example) parts.push(shellQuote($("#constraint").value));
  $("#command").textContent = parts.join(" ");
  $("#command-file").hidden = !constraint?.file;
  $("#command-file").textContent = constraint?.file ? `where ${constraint.file} holds the constraint's text` : "";
}

// --- probabilities and the tooltip -------------------------------------------------

function colourOf(probability) {
  for (const [lowest, colour] of window.PROBABILITY_COLOURS) if (probability >= lowest) return colour;
  return "blue";
}

function showLegend() {
  const legend = $("#legend");
  legend.append("token probability:");
  for (const [lowest, colour] of [...window.PROBABILITY_COLOURS].reverse()) {
    const swatch = document.createElement("span");
    swatch.className = `swatch p-${colour}`;
    swatch.textContent = `\u2265${Math.round(lowest * 100)}%`;
    legend.append(swatch);
  }
}

function visible(text) {
  return JSON.stringify(text).slice(1, -1).replace(/ /g, "\u2423");
}

function percent(logprob) {
  return `${(Math.exp(logprob) * 100).toFixed(1)}%`;
}

const REMOVED = {
  constraint: { className: "masked", label: "masked by the constraint" },
  filter: { className: "filtered", label: "removed by a filter" },
};

function showTooltip(span) {
  const tooltip = $("#tooltip");
  const token = JSON.parse(span.dataset.token);
  const rows = Object.entries(token.top).map(([text, logprob]) => {
    // Why the draw could not pick it (the API's removed_alternatives): struck through and said.
    const removed = REMOVED[token.removed[text]];
    const kind = text === token.text ? "is-chosen" : removed?.className;
    const width = Math.max(1, Math.round(Math.exp(logprob) * 80));
    return `<tr${kind ? ` class="${kind}"` : ""}><td class="text">${escapeHtml(visible(text))}</td>` +
      `<td class="p">${percent(logprob)}</td><td><span class="bar" style="width:${width}px"></span></td>` +
      `<td class="why">${removed ? removed.label : ""}</td></tr>`;
  });
  tooltip.innerHTML = `<div class="chosen">${escapeHtml(visible(token.text))}: ${percent(token.logprob)}` +
    ` under the model</div><table>${rows.join("")}</table>`;
  const box = span.getBoundingClientRect();
  tooltip.style.left = `${window.scrollX + box.left}px`;
  tooltip.style.top = `${window.scrollY + box.bottom + 6}px`;
  tooltip.hidden = false;
}

function escapeHtml(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

// --- generating -------------------------------------------------------------------------

// One piece of streamed text: a span per token when the tokens spell it, else one span
// coloured by its first token (a piece can hold several tokens when the server batches them).
function appendPiece(text, logprobs) {
  const completion = $("#completion");
  const tokens = logprobs ? logprobs.tokens.map((t, i) => ({
    text: t, logprob: logprobs.token_logprobs[i], top: logprobs.top_logprobs[i] || {},
    removed: logprobs.removed_alternatives?.[i] || {},
    distribution: logprobs.sampled_distribution?.[i] || [], offset: logprobs.text_offset[i],
  })) : [];
  const spelled = tokens.map((token) => token.text).join("") === text;
  const parts = spelled ? tokens.map((token) => [token.text, token]) : [[text, tokens[0]]];
  for (const [part, token] of parts) {
    if (part === "") continue;
    if (!token) { completion.append(part); continue; }
    const span = document.createElement("span");
    const probability = Math.exp(token.logprob);
    span.className = `token p-${colourOf(probability)}`;
    span.textContent = part;
    span.dataset.p = probability.toFixed(4);
    span.dataset.token = JSON.stringify(token);
    completion.append(span);
  }
}

function setStatus(text, isError = false) {
  $("#status").textContent = text;
  $("#status").classList.toggle("error", isError);
}

async function generate() {
  if ($("#seed").value === "") $("#seed").value = Math.floor(Math.random() * 2 ** 31);
  update();
  const body = {
    model: window.MODEL, prompt: $("#prompt").value, max_tokens: Number($("#max-tokens").value),
    seed: Number($("#seed").value), sampler: chainSpecs(), logprobs: Number($("#alternatives").value),
    removed_alternatives: true, sampled_distribution: true, stream: true, stream_options: { include_usage: true },
  };
  const constraint = chosenConstraint();
  if (constraint) Object.assign(body, constraint.field($("#constraint").value));
  $("#constraint").classList.remove("invalid");
  $("#prompt-echo").textContent = body.prompt;
  $("#completion").replaceChildren();
  $("#tooltip").hidden = true;
  $("#inside").hidden = true;
  state.controller = new AbortController();
  $("#generate").disabled = true;
  $("#stop").disabled = false;
  setStatus("Generating\u2026");
  const started = performance.now();
  let tokens = 0, finish = null;
  try {
    const response = await api("/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw Object.assign(new Error(error.error.message), { param: error.error.param });
    }
    // Server-sent events: "data: {...}" blocks separated by blank lines, then "data: [DONE]".
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!block.startsWith("data: ")) continue;
        const data = block.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          appendPiece(choice.text, choice.logprobs);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        const seconds = (performance.now() - started) / 1000;
        setStatus(`Generating\u2026 ${seconds.toFixed(1)} s`);
      }
    }
    const seconds = (performance.now() - started) / 1000;
    const why = finish !== "stop" ? "reached max tokens"
      : constraint ? "the constrained text ended" : "reached a stop string"; // gen.core.constraints' ending rule
    setStatus(`Finished: ${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(0)} tokens/s), ${why}.`);
  } catch (error) {
    if (error.name === "AbortError") setStatus("Stopped.");
    else if (error instanceof NeedsKey) setStatus("Waiting for an API key.", true);
    else setStatus(`Error: ${error.message}`, true);
    if (CONSTRAINT_PARAMS.includes(error.param)) $("#constraint").classList.add("invalid"); // a bad constraint
  } finally {
    state.controller = null;
    $("#generate").disabled = false;
    $("#stop").disabled = true;
  }
}

// --- inside the model: the clicked token's distributions and attention -----------------------

function probabilityBar(probability, className) {
  const width = Math.max(probability > 0 ? 1 : 0, Math.round(probability * 160));
  return `<span class="bar ${className}" style="width:${width}px"></span>` +
    `<span class="p">${(probability * 100).toFixed(1)}%</span>`;
}

// Before and after the chain, for the model's top tokens: a filter's cut shows as an empty
// bar marked "removed", a temperature as bars that grow for the likely and shrink for the rest.
function showDistribution(token) {
  const rows = token.distribution.map((entry) => {
    const removed = REMOVED[entry.removed];
    const kind = [entry.text === token.text ? "is-chosen" : "", removed ? `removed ${removed.className}` : ""].join(" ").trim();
    return `<tr class="${kind}" data-removed="${entry.removed || ""}" data-probability="${entry.probability}" ` +
      `data-sampled="${entry.sampled_probability}"><td class="text">${escapeHtml(visible(entry.text))}</td>` +
      `<td>${probabilityBar(entry.probability, "model")}</td>` +
      `<td>${probabilityBar(entry.sampled_probability, "sampled")}</td>` +
      `<td class="why">${removed ? removed.label : ""}</td></tr>`;
  });
  $("#distribution").innerHTML = `<h3>What the sampler did for ${escapeHtml(visible(token.text))}</h3>` +
    `<table><tr><th>token</th><th>the model</th><th>drawn from (after the chain)</th><th></th></tr>${rows.join("")}</table>`;
}

// Each head's weights over the text up to the token (one row per head, darker is more weight).
async function showAttention(token) {
  const box = $("#attention");
  box.innerHTML = `<h3>Attention of ${escapeHtml(visible(token.text))}</h3><p class="hint">Reading\u2026</p>`;
  const text = $("#prompt-echo").textContent + $("#completion").textContent;
  try {
    const response = await api("/attention", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: text.slice(0, token.offset + token.text.length), position: -1 }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error.message);
    state.attention = answer; // for tests and the curious
    const rows = [];
    answer.weights.forEach((heads, layer) => heads.forEach((weights, head) => {
      const strongest = Math.max(...weights);
      const cells = weights.map((weight, key) => {
        const shade = strongest > 0 ? weight / strongest : 0;
        return `<span class="key" data-weight="${weight}" title="${(weight * 100).toFixed(1)}%" ` +
          `style="background:rgba(37,99,235,${shade.toFixed(3)});color:${shade > 0.55 ? "#fff" : "inherit"}">` +
          `${escapeHtml(visible(answer.tokens[key]))}</span>`;
      });
      rows.push(`<div class="head-row" data-layer="${layer}" data-head="${head}"><span class="head-name">` +
        `layer ${layer} head ${head}</span><span class="keys">${cells.join("")}</span></div>`);
    }));
    box.innerHTML = `<h3>Attention of ${escapeHtml(visible(token.text))} <small>(each head's weights over the ` +
      `text before it: the tril-masked softmax of queries and keys)</small></h3>${rows.join("")}`;
  } catch (error) {
    if (!(error instanceof NeedsKey)) box.innerHTML = `<h3>Attention</h3><p class="hint">${escapeHtml(error.message)}</p>`;
  }
}

function showInside(span) {
  const token = JSON.parse(span.dataset.token);
  $("#inside").hidden = false;
  showDistribution(token);
  return showAttention(token);
}

// --- wiring -----------------------------------------------------------------------------

async function start() {
  showLegend();
  $("#key-form").addEventListener("submit", useKey);
  try {
    const response = await api("/v1/samplers");
    state.samplers = (await response.json()).data;
  } catch (error) {
    if (error instanceof NeedsKey) { setStatus("Waiting for an API key.", true); return; }
    setStatus(`Error: cannot list the samplers (${error.message})`, true);
  }
  $("#add-sampler").addEventListener("click", () => addLink());
  $("#generate").addEventListener("click", generate);
  $("#stop").addEventListener("click", () => state.controller?.abort());
  for (const id of ["#prompt", "#temperature", "#seed", "#max-tokens", "#constraint"]) $(id).addEventListener("input", update);
  $("#constraint-kind").addEventListener("change", showConstraintBox);
  const completion = $("#completion");
  completion.addEventListener("mouseover", (event) => {
    if (event.target.classList.contains("token")) showTooltip(event.target);
  });
  completion.addEventListener("mouseout", (event) => {
    if (event.target.classList.contains("token") && !event.target.classList.contains("pinned")) $("#tooltip").hidden = true;
  });
  completion.addEventListener("click", (event) => { // a tap pins the alternatives; another tap unpins
    const span = event.target.closest(".token");
    for (const pinned of document.querySelectorAll(".token.pinned")) if (pinned !== span) pinned.classList.remove("pinned");
    if (!span) { $("#tooltip").hidden = true; return; }
    span.classList.toggle("pinned");
    if (span.classList.contains("pinned")) { showTooltip(span); showInside(span); } else $("#tooltip").hidden = true;
  });
  addLink("top_k", { k: 40 });
  update();
  document.body.dataset.ready = "true";
}

start();
