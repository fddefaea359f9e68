(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("sample-data").textContent);
  var runSelect = document.getElementById("sb-run");
  var questionSelect = document.getElementById("sb-question");
  var minInput = document.getElementById("sb-min-trait");
  var grid = document.getElementById("sb-grid");
  var count = document.getElementById("sb-count");

  function option(value, text) {
    var o = document.createElement("option");
    o.value = String(value);
    o.textContent = text;
    return o;
  }
  function currentRun() { return data.runs[Number(runSelect.value)]; }
  function fmt(x, digits) { return x === null || x === undefined ? "n/a" : x.toFixed(digits); }

  function fillQuestions() {
    questionSelect.replaceChildren();
    currentRun().questions.forEach(function (q, i) { questionSelect.appendChild(option(i, q)); });
  }

  function answerCard(a) {
    var card = document.createElement("div");
    card.className = "sb-answer";
    card.dataset.trait = a.trait === null ? "" : String(a.trait);
    var scores = document.createElement("div");
    scores.className = "sb-scores";
    scores.textContent = "sample " + a.sample + " · trait " + fmt(a.trait, 1) + " · coherence " + fmt(a.coherence, 2);
    var text = document.createElement("div");
    text.className = "sb-text";
    text.textContent = a.answer;
    card.append(scores, text);
    return card;
  }

  function render() {
    var run = currentRun();
    var q = Number(questionSelect.value);
    grid.replaceChildren();
    run.columns.forEach(function (name, c) {
      var column = document.createElement("div");
      column.className = "sb-column";
      column.dataset.column = name;
      var head = document.createElement("h4");
      head.textContent = name;
      column.appendChild(head);
      var answers = run.cells[q][c];
      if (answers.length === 0) {
        var empty = document.createElement("div");
        empty.className = "sb-empty";
        empty.textContent = "no answers to this question";
        column.appendChild(empty);
      }
      answers.forEach(function (a) { column.appendChild(answerCard(a)); });
      var filtered = document.createElement("div");
      filtered.className = "sb-empty sb-filtered";
      filtered.textContent = "all answers here score below the minimum";
      column.appendChild(filtered);
      grid.appendChild(column);
    });
    applyFilter();
  }

  function applyFilter() {
    var min = Number(minInput.value);
    if (!isFinite(min) || min < 0) { min = 0; }
    var shown = 0, total = 0;
    grid.querySelectorAll(".sb-answer").forEach(function (card) {
      var t = card.dataset.trait === "" ? null : Number(card.dataset.trait);
      var keep = min <= 0 || (t !== null && t >= min);
      card.hidden = !keep;
      total += 1;
      if (keep) { shown += 1; }
    });
    grid.querySelectorAll(".sb-column").forEach(function (column) {
      var cards = column.querySelectorAll(".sb-answer");
      var visible = column.querySelectorAll(".sb-answer:not([hidden])");
      column.querySelector(".sb-filtered").hidden = cards.length === 0 || visible.length > 0;
    });
    count.textContent = "showing " + shown + " of " + total + " answers";
  }

  data.runs.forEach(function (r, i) { runSelect.appendChild(option(i, r.name)); });
  document.getElementById("sb-run-label").hidden = data.runs.length < 2;
  runSelect.addEventListener("change", function () { fillQuestions(); render(); });
  questionSelect.addEventListener("change", render);
  minInput.addEventListener("input", applyFilter);
  if (data.runs.length === 0 || currentRun().questions.length === 0) {
    count.textContent = "no eval answers found";
    return;
  }
  fillQuestions();
  render();
})();
