// The status page: polls /v1/status with the operator's bearer token.
// The token comes from the URL fragment (#token=..., never sent to a server)
// or the form, and is kept in sessionStorage for this tab only.
"use strict";

const REFRESH_MS = 2000;
let timer = null;

function token() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const fromFragment = fragment.get("token");
  if (fromFragment) {
    sessionStorage.setItem("mmt-token", fromFragment);
    history.replaceState(null, "", window.location.pathname);
  }
  return sessionStorage.getItem("mmt-token");
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function render(overview) {
  const count = (status) =>
    (overview.status_counts.find((c) => c.status === status) || { jobs: 0 }).jobs;
  document.getElementById("queue-depth").textContent = overview.queue_depth;
  document.getElementById("completed").textContent = overview.completed_recently;
  document.getElementById("completed-label").textContent =
    `completed in the last ${Math.round(overview.window_seconds / 60)} min`;
  const minutes = overview.window_seconds / 60;
  document.getElementById("throughput").textContent =
    (overview.audio_seconds_recently / 60 / minutes).toFixed(2);
  document.getElementById("failed").textContent = count("dead_lettered");
  const rows = overview.recent.map((job) => {
    const tr = document.createElement("tr");
    tr.className = "job";
    tr.appendChild(cell(job.id.slice(0, 16), "id"));
    const status = cell("");
    const badge = document.createElement("span");
    badge.className = `status ${job.status}`;
    badge.textContent = job.status;
    status.appendChild(badge);
    tr.appendChild(status);
    tr.appendChild(cell(new Date(job.received_at).toLocaleString()));
    tr.appendChild(cell(job.audio_seconds == null ? "" : job.audio_seconds.toFixed(1)));
    tr.appendChild(cell(job.attempts));
    tr.appendChild(cell(job.error ? `${job.error.stage}: ${job.error.reason}` : ""));
    return tr;
  });
  document.getElementById("jobs").replaceChildren(...rows);
  document.getElementById("updated").textContent =
    `updated ${new Date().toLocaleTimeString()}`;
}

function showLogin(message) {
  clearTimeout(timer);
  document.getElementById("dashboard").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function refresh() {
  const bearer = token();
  if (!bearer) return showLogin();
  try {
    const response = await fetch("/v1/status", {
      headers: { Authorization: `Bearer ${bearer}` },
      cache: "no-store",
    });
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem("mmt-token");
      return showLogin("That token is not accepted for the status page.");
    }
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    render(await response.json());
    document.getElementById("login").hidden = true;
    document.getElementById("dashboard").hidden = false;
    document.getElementById("error").textContent = "";
  } catch (err) {
    document.getElementById("error").textContent = `Refresh failed: ${err.message}`;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("mmt-token", document.getElementById("token").value.trim());
  refresh();
});

refresh();
