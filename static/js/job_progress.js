// Live progress for queued and running jobs: every element with data-job-poll="<API URL>" polls
// GET /api/v1/jobs/<id>/ (session cookie; a GET needs no CSRF token) and updates its progress bar, stage and
// status badge. The job page reloads when its job ends, so the server renders the player or the error.
(function () {
  "use strict";
  var FINISHED = { SUCCEEDED: true, FAILED: true, CANCELED: true };
  var STATUS_LABELS = { QUEUED: "Queued", RUNNING: "Running", SUCCEEDED: "Succeeded", FAILED: "Failed",
                        CANCELED: "Canceled" };
  var labelsNode = document.getElementById("stage-labels");
  var stageLabels = labelsNode ? JSON.parse(labelsNode.textContent) : {};

  function field(root, name) {
    return root.querySelector("[data-field='" + name + "']");
  }

  function setText(node, text) {
    if (node && node.textContent !== text) { node.textContent = text; }
  }

  function render(root, job) {
    var progress = field(root, "progress");
    if (progress && typeof job.progress === "number") { progress.value = job.progress; }
    setText(field(root, "percent"), Math.round((job.progress || 0) * 100) + "%");
    setText(field(root, "stage"), stageLabels[job.stage] || job.stage || "");
    var card = root.closest(".job-card") || document;
    var badge = field(root, "status") || field(card, "status") || document.querySelector("[data-field='status']");
    if (badge && job.status) {
      badge.className = "badge badge-" + job.status.toLowerCase();
      setText(badge, STATUS_LABELS[job.status] || job.status);
    }
    var queue = field(root, "queue");
    if (queue) {
      queue.hidden = !job.queue_position;
      setText(field(root, "queue-position"), String(job.queue_position || ""));
    }
    var eta = field(root, "eta");
    if (eta) {
      var known = typeof job.eta_seconds === "number";
      eta.hidden = !known;
      if (known) { setText(field(root, "eta-seconds"), String(Math.max(0, Math.round(job.eta_seconds)))); }
    }
    if (job.poster_url) {
      var picture = field(root, "picture");
      if (picture) { picture.src = job.poster_url; }
    }
  }

  function finish(root, job) {
    if (root.getAttribute("data-reload-on-finish") === "true") {
      window.location.reload();
      return;
    }
    var progress = field(root, "progress");
    if (progress) { progress.hidden = true; }
    setText(field(root, "stage"), job.status === "FAILED" ? (job.error || "Failed") : "");
  }

  function poll(root) {
    var url = root.getAttribute("data-job-poll");
    var interval = parseInt(root.getAttribute("data-poll-ms"), 10) || 1500;
    var failures = 0;
    var errorNote = field(root, "poll-error");

    function schedule(delay) { window.setTimeout(tick, delay); }

    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (job) {
          failures = 0;
          if (errorNote) { errorNote.hidden = true; }
          render(root, job);
          if (FINISHED[job.status]) { finish(root, job); } else { schedule(interval); }
        })
        .catch(function () {
          failures += 1;
          if (errorNote) { errorNote.hidden = false; }
          schedule(Math.min(30000, interval * Math.pow(2, failures)));  // back off while the server is away
        });
    }
    schedule(Math.min(interval, 500));
  }

  document.querySelectorAll("[data-job-poll]").forEach(poll);
})();
