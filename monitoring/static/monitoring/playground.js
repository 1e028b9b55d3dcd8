// The playground: posts to the API's chat view (as the admin's logged-in user) with stream: true
// and shows the server-sent events as they arrive. No libraries: fetch and a stream reader.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("playground-form");
  const transcript = document.getElementById("transcript");
  const status = document.getElementById("turn-status");
  const sessionSelect = document.getElementById("session");
  const send = document.getElementById("send");
  const field = (name) => form.elements[name];

  sessionSelect.addEventListener("change", () => {
    const url = new URL(form.dataset.pageUrl, window.location.href);
    if (sessionSelect.value) url.searchParams.set("session", sessionSelect.value);
    window.location.assign(url);
  });

  function addTurn(role, text) {
    const turn = document.createElement("div");
    turn.className = "turn " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    turn.append(who, body);
    transcript.append(turn);
    transcript.scrollTop = transcript.scrollHeight;
    return body;
  }

  // One server-sent event block ("event: x\ndata: {...}") as {event, data}.
  function parseEvent(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    return { event, data: data.length ? JSON.parse(data.join("\n")) : null };
  }

  function showError(body) {
    status.textContent = (body && body.error_message) || "The request failed.";
    status.classList.add("errornote");
  }

  function finished(result) {
    status.textContent = `${result.model} · ${result.prompt_tokens} + ${result.completion_tokens} tokens · ` +
      `${result.response_time.toFixed(2)} s`;
    if (sessionSelect.value !== result.session_id) {
      const option = new Option(result.session_id, result.session_id, true, true);
      sessionSelect.add(option);
      const url = new URL(window.location.href);
      url.searchParams.set("session", result.session_id);
      window.history.replaceState(null, "", url);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = field("user_message").value;
    if (!message.trim()) return;
    const payload = { user_message: message, stream: true, session_id: sessionSelect.value };
    if (field("model").value.trim()) payload.model = field("model").value.trim();
    if (field("role").value.trim()) payload.role = field("role").value;
    if (field("temperature").value) payload.temperature = Number(field("temperature").value);

    send.disabled = true;
    status.classList.remove("errornote");
    status.textContent = "…";
    addTurn("user", message);
    field("user_message").value = "";
    let answer = null;
    try {
      const response = await fetch(form.dataset.chatUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          "Accept": "text/event-stream",
          "X-CSRFToken": field("csrfmiddlewaretoken").value,
        },
        body: JSON.stringify(payload),
      });
      if (!response.ok) {
        showError(await response.json().catch(() => null));
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += value;
        let end;
        while ((end = buffered.indexOf("\n\n")) !== -1) {
          const { event: name, data } = parseEvent(buffered.slice(0, end));
          buffered = buffered.slice(end + 2);
          if (name === "delta") {
            answer = answer || addTurn("assistant", "");
            answer.textContent += data.delta;
            transcript.scrollTop = transcript.scrollHeight;
          } else if (name === "done") {
            finished(data);
          } else if (name === "error") {
            showError(data);
          }
        }
      }
    } catch (error) {
      showError({ error_message: String(error) });
    } finally {
      send.disabled = false;
    }
  });
});
