"""The page at ``GET /``: one self-contained HTML file (no external assets), a form over ``POST /answer``.

It asks ``/health`` which kind of pipeline runs and shows the fields that apply; answers are written with
``textContent`` only, so nothing a model or a user typed is ever parsed as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qa-ebm</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin-bottom: .2rem; }
  #kind { color: #666; margin-top: 0; }
  label { display: block; margin-top: .8rem; font-weight: 600; }
  input[type=text], textarea { width: 100%; box-sizing: border-box; padding: .4rem; font: inherit; }
  textarea { min-height: 7rem; }
  .row { display: flex; gap: 1rem; flex-wrap: wrap; }
  .row label { font-weight: 400; }
  input[type=number] { width: 6rem; }
  button { margin-top: 1rem; padding: .45rem 1.2rem; font: inherit; }
  #out { margin-top: 1.5rem; }
  #answer { font-size: 1.15rem; padding: .6rem .8rem; background: #f3f6fa; border-left: 4px solid #4a78b5; }
  #facts { color: #444; }
  .error { color: #a01010; white-space: pre-wrap; }
  pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: 12px; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<h1>qa-ebm</h1>
<p id="kind">loading&hellip;</p>
<form id="form">
  <label for="question">Question</label>
  <input type="text" id="question" required autofocus>
  <div id="context-box">
    <label for="context">Passage <span id="context-note"></span></label>
    <textarea id="context"></textarea>
  </div>
  <div class="row">
    <label>steps <input type="number" id="steps" min="0" placeholder="default"></label>
    <label data-kind="answer">candidates <input type="number" id="candidates" min="1" value="1"></label>
    <label data-kind="answer">seed <input type="number" id="seed" min="0" placeholder="default"></label>
    <label data-kind="reading">mode <select id="mode">
      <option>extract</option><option>generate</option><option>proposal</option></select></label>
  </div>
  <button type="submit" id="go">Answer</button>
</form>
<div id="out" hidden>
  <div id="answer"></div>
  <p id="facts"></p>
  <details><summary>JSON</summary><pre id="json"></pre></details>
</div>
<p id="error" class="error" hidden></p>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let kind = "answer";

fetch("/health").then((r) => r.json()).then((h) => {
  kind = h.kind;
  $("kind").textContent = h.pipeline + " (" + h.kind + " pipeline; passage " + h.context + ")";
  document.querySelectorAll("[data-kind]").forEach((el) => { el.hidden = el.dataset.kind !== kind; });
  $("context-box").hidden = h.context === "ignored";
  $("context-note").textContent = h.context === "required" ? "(required)" : "(optional)";
}).catch(() => { $("kind").textContent = "the server did not answer /health"; });

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { question: $("question").value, steps: number("steps") };
  const context = $("context").value;
  if (!$("context-box").hidden && context.trim() !== "") body.context = context;
  if (kind === "answer") { body.candidates = number("candidates"); body.seed = number("seed"); }
  else { body.mode = $("mode").value; }
  $("go").disabled = true;
  $("error").hidden = true;
  try {
    const response = await fetch("/answer", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(response.status + ": " + (data.error || response.statusText));
    $("answer").textContent = data.answer === "" ? "(no answer)" : data.answer;
    const facts = ["energy " + (data.energy === null ? "n/a" : data.energy.toFixed(3)), "steps " + data.steps];
    if (data.sentences !== undefined) facts.push("sentences " + data.sentences);
    if (data.start !== undefined && data.start !== null) facts.push("span [" + data.start + ":" + data.end + "]");
    $("facts").textContent = facts.join(" \\u00b7 ");
    $("json").textContent = JSON.stringify(data, null, 2);
    $("out").hidden = false;
  } catch (err) {
    $("error").textContent = String(err.message || err);
    $("error").hidden = false;
  } finally {
    $("go").disabled = false;
  }
});
</script>
</body>
</html>
"""
