// The chat page: plain JavaScript, no build step, no external assets.
"use strict";

const form = document.getElementById("ask-form");
const questionBox = document.getElementById("question");
const sendButton = document.getElementById("send");
const conversation = document.getElementById("conversation");
const statusLine = document.getElementById("status");
const apiKeyInput = document.getElementById("api-key");
const streamToggle = document.getElementById("stream");
const MODE_LABELS = { generated: "generated", extractive: "quoted from the documents", no_answer: "not in the documents" };
const DEGRADED_LABELS = {
  generator_unavailable: "The answer writer is down, so this answer is quoted from the documents.",
  generator_timeout: "The answer writer was too slow, so this answer is quoted from the documents.",
  generator_overloaded: "The answer writer is busy, so this answer is quoted from the documents.",
  generator_error: "The answer writer failed, so this answer is quoted from the documents.",
};
let history = [];

apiKeyInput.value = sessionStorage.getItem("apiKey") || "";
apiKeyInput.addEventListener("change", () => sessionStorage.setItem("apiKey", apiKeyInput.value));

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addTurn(role) {
  const item = element("li", `turn ${role}`);
  item.append(element("p", "who", role === "user" ? "You" : "Answer"));
  const text = element("p", "text");
  item.append(text);
  conversation.append(item);
  item.scrollIntoView({ block: "end" });
  return { item, text };
}

function showSources(turn, sources) {
  turn.item.querySelector(".sources")?.remove();
  if (!sources || sources.length === 0) return;
  const list = element("ul", "sources");
  list.setAttribute("aria-label", "Sources");
  for (const source of sources) {
    const entry = element("li");
    const details = element("details");
    const title = source.metadata?.title || source.metadata?.question || source.document_id;
    details.append(element("summary", null, `${title} — score ${Number(source.score).toFixed(2)}`));
    // Where it came from: "manual.pdf · page 12 · Wiring".
    const where = [source.source || source.document_id];
    if (source.page) where.push(`page ${source.page}`);
    if (source.section) where.push(source.section);
    details.append(element("p", "citation", where.join(" · ")));
    details.append(element("blockquote", null, source.text));
    details.append(element("p", "hint", `document ${source.document_id}`));
    entry.append(details);
    list.append(entry);
  }
  turn.item.append(list);
}

function showFinal(turn, result) {
  turn.text.textContent = result.answer;
  const label = element("span", `mode ${result.mode}`, MODE_LABELS[result.mode] || result.mode);
  turn.item.querySelector(".who").append(label);
  for (const reason of result.degraded || []) {
    turn.item.append(element("p", "notice", DEGRADED_LABELS[reason] || `Degraded: ${reason}`));
  }
  showSources(turn, result.sources);
}

function showError(turn, message) {
  turn.text.textContent = "";
  turn.item.append(element("p", "error", message));
}

function headers() {
  const result = { "Content-Type": "application/json", Accept: "application/json, text/event-stream" };
  if (apiKeyInput.value) result.Authorization = `Bearer ${apiKeyInput.value}`;
  return result;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return `${body.error.message} (${response.status}, request ${body.error.request_id})`;
  } catch {
    return `The server answered ${response.status}.`;
  }
}

function parseEvents(buffer, onEvent) {
  // Server-sent events are separated by a blank line; keep the unfinished tail for later.
  const blocks = buffer.split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) onEvent(name, JSON.parse(data.join("\n")));
  }
  return rest;
}

async function ask(question) {
  const turn = addTurn("assistant");
  turn.text.textContent = "…";
  const body = { question, history: history.slice(-10), stream: streamToggle.checked };
  let response;
  try {
    response = await fetch("/v1/ask", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  } catch (error) {
    showError(turn, "The gateway cannot be reached. Is it running?");
    return;
  }
  if (!response.ok) {
    showError(turn, await errorMessage(response));
    return;
  }
  let final = null;
  if (!streamToggle.checked) {
    final = await response.json();
  } else {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let written = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), (name, data) => {
        if (name === "sources") showSources(turn, data.sources);
        else if (name === "token") { written += data.text; turn.text.textContent = written; }
        else if (name === "done") final = data;
        else if (name === "error") showError(turn, data.error.message);
      });
    }
  }
  if (final) {
    showFinal(turn, final);
    history.push({ role: "user", text: question }, { role: "assistant", text: final.answer });
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = questionBox.value.trim();
  if (!question) return;
  addTurn("user").text.textContent = question;
  questionBox.value = "";
  sendButton.disabled = true;
  try {
    await ask(question);
  } finally {
    sendButton.disabled = false;
    questionBox.focus();
  }
});

questionBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

document.getElementById("clear").addEventListener("click", () => {
  history = [];
  conversation.replaceChildren();
  questionBox.focus();
});

async function checkStatus() {
  try {
    const response = await fetch("/readyz");
    const body = await response.json();
    if (!response.ok) {
      statusLine.textContent = `Not ready: ${body.error.message}`;
      statusLine.className = "status degraded";
    } else if (body.generator !== "ready") {
      statusLine.textContent = "Answers are quoted from the documents (the answer writer is unavailable).";
      statusLine.className = "status degraded";
    } else {
      const model = body.generator_model ? ` Answers are written by ${body.generator_model}` : "";
      const fallback = body.generator_fallback_reason
        ? ` (a fallback: ${body.generator_fallback_reason})`
        : "";
      statusLine.textContent = `Ready.${model}${fallback}${model ? ", then checked against the sources." : ""}`;
      statusLine.className = "status";
    }
  } catch {
    statusLine.textContent = "The gateway cannot be reached.";
    statusLine.className = "status degraded";
  }
}

checkStatus();
questionBox.focus();
