// Live progress for queued and running jobs: every element with data-job-poll="<API URL>" follows its job and
// updates its progress bar, stage and status badge. The job page reloads when its job ends, so the server renders
// the player or the error. Updates are pushed: GET <API URL>events (Server-Sent Events, session cookie). If the
// browser has no EventSource, the page watches more jobs than MAX_STREAMS, or the stream fails before its first
// event (or three times in a row), the element falls back to polling GET <API URL>.
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

  var MAX_STREAMS = 3;  // browsers allow about six connections per site; leave room for the page itself

  function follow(root) {
    var source;
    try {
      source = new EventSource(root.getAttribute("data-job-poll") + "events");
    } catch (error) {
      poll(root);
      return;
    }
    var received = false;
    var errors = 0;
    var errorNote = field(root, "poll-error");

    function onEvent(event) {
      received = true;
      errors = 0;
      if (errorNote) { errorNote.hidden = true; }
      var job = JSON.parse(event.data);
      render(root, job);
      if (FINISHED[job.status]) {
        source.close();
        finish(root, job);
      }
    }
    ["status", "progress", "completed"].forEach(function (name) { source.addEventListener(name, onEvent); });
    source.onerror = function () {
      errors += 1;
      // The server ends a long stream on purpose and EventSource reconnects by itself (with Last-Event-ID);
      // a stream that never worked, or keeps failing, gives way to polling.
      if (!received || errors >= 3 || source.readyState === EventSource.CLOSED) {
        source.close();
        poll(root);
      }
    };
  }

  var watched = document.querySelectorAll("[data-job-poll]");
  var push = typeof window.EventSource === "function" && watched.length <= MAX_STREAMS;
  watched.forEach(push ? follow : poll);
})();
