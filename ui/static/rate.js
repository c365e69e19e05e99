// The rating page: fetch the first unanswered image, collect three yes/no answers,
// POST them (the server commits each one), show the next. A reload resumes where the
// rater stopped because the server, not the page, knows what is answered.
"use strict";

(function () {
  const nextUrl = document.body.dataset.nextUrl;
  const answerUrl = document.body.dataset.answerUrl;
  const $ = (id) => document.getElementById(id);
  const form = $("answer-form");
  const questions = Array.from(form.querySelectorAll("fieldset.question")).map((f) => f.dataset.question);
  let current = null;  // opaque id of the image on screen
  let busy = false;

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function chosen(q) {
    const input = form.querySelector(`input[name="${q}"]:checked`);
    return input ? input.value : null;
  }

  function refresh() {
    const open = questions.filter((q) => chosen(q) === null);
    $("submit").disabled = busy || open.length > 0;
    form.querySelectorAll("fieldset.question").forEach((f) => {
      f.classList.toggle("current", f.dataset.question === open[0]);
    });
  }

  function render(state) {
    document.body.dataset.answered = String(state.answered);
    $("progress").textContent = state.done
      ? `${state.answered} of ${state.total} answered`
      : `image ${state.item.position} of ${state.total} (${state.answered} answered)`;
    if (state.done) {
      current = null;
      $("task").hidden = true;
      $("done").hidden = false;
      return;
    }
    current = state.item.id;
    form.reset();
    $("prompt").textContent = state.item.prompt;
    $("image").src = state.item.image;
    const demos = $("demos");
    demos.replaceChildren(...state.item.demos.map((src, i) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = `reference image ${i + 1}`;
      return img;
    }));
    $("task").dataset.item = current;
    $("task").hidden = false;
    $("done").hidden = true;
    refresh();
  }

  async function load() {
    const resp = await fetch(nextUrl, { cache: "no-store" });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    render(body);
  }

  async function submit(event) {
    if (event) event.preventDefault();
    if (busy || current === null || questions.some((q) => chosen(q) === null)) return;
    busy = true;
    refresh();
    const answer = { item: current };
    questions.forEach((q) => { answer[q] = chosen(q); });
    try {
      const resp = await fetch(answerUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(answer),
      });
      const body = await resp.json();
      if (resp.status === 409) {  // answered already (another tab): move on
        await load();
      } else if (!resp.ok) {
        throw new Error(body.error || resp.statusText);
      } else {
        render(body);
      }
      showError(null);
    } catch (err) {
      showError(`Could not save: ${err.message}. Try again.`);
    } finally {
      busy = false;
      refresh();
    }
  }

  form.addEventListener("change", refresh);
  form.addEventListener("submit", submit);
  document.addEventListener("keydown", (e) => {
    if (current === null || e.altKey || e.ctrlKey || e.metaKey) return;
    const key = e.key.toLowerCase();
    if (key === "y" || key === "n") {
      const open = questions.find((q) => chosen(q) === null);
      if (open) {
        $(`${open}-${key === "y" ? "yes" : "no"}`).checked = true;
        refresh();
      }
    } else if (key === "enter" && !$("submit").disabled) {
      submit(e);
    }
  });
  load().catch((err) => showError(`Could not load: ${err.message}`));
})();
