// New-video form: preview the chosen image before upload, keep it across a form error, and show that a slow upload
// is under way.
//
// A browser never refills a file input from the server's answer, so after an error (an empty prompt, too many jobs)
// the chosen picture would be lost. The file is kept in this browser's IndexedDB from the moment it is chosen and
// put back into the input when the form comes back with errors; any other visit of the form forgets it.
(function () {
  "use strict";
  var form = document.getElementById("new-video-form");
  if (!form) { return; }
  var input = form.querySelector("input[type=file][data-preview]");
  var preview = input ? document.getElementById(input.getAttribute("data-preview")) : null;
  var placeholder = document.getElementById("image-placeholder");
  var previewUrl = null;
  var KEPT_FOR_MS = 60 * 60 * 1000;

  function showPreview() {
    if (!input || !preview) { return; }
    if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
    var file = input.files && input.files[0];
    if (!file || file.type.indexOf("image/") !== 0) {
      preview.hidden = true;
      preview.removeAttribute("src");
      if (placeholder) { placeholder.hidden = false; }
      return;
    }
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    if (placeholder) { placeholder.hidden = true; }
  }

  function withStore(mode, action) {
    if (!window.indexedDB) { return; }
    var opening;
    try { opening = window.indexedDB.open("turbosite-new-video", 1); } catch (e) { return; }
    opening.onupgradeneeded = function () { opening.result.createObjectStore("kept"); };
    opening.onsuccess = function () {
      var db = opening.result;
      var tx = db.transaction("kept", mode);
      action(tx.objectStore("kept"));
      tx.oncomplete = function () { db.close(); };
    };
  }

  function keep(file) {
    withStore("readwrite", function (store) { store.put({ file: file, at: Date.now() }, "image"); });
  }

  function forget() {
    withStore("readwrite", function (store) { store["delete"]("image"); });
  }

  function restore() {
    withStore("readonly", function (store) {
      var reading = store.get("image");
      reading.onsuccess = function () {
        var kept = reading.result;
        if (!kept || !kept.file || Date.now() - kept.at > KEPT_FOR_MS) { return; }
        if (input.files && input.files.length) { return; }  // the person already chose again
        var transfer = new DataTransfer();
        transfer.items.add(kept.file);
        input.files = transfer.files;
        showPreview();
      };
    });
  }

  if (input) {
    input.addEventListener("change", function () {
      showPreview();
      var file = input.files && input.files[0];
      if (file) { keep(file); } else { forget(); }
    });
    showPreview();  // the browser may keep a file chosen before a reload
    if (form.getAttribute("data-form-error") === "true") { restore(); } else { forget(); }
  }

  form.addEventListener("submit", function () {
    var button = form.querySelector("button[type=submit]");
    if (button) {
      button.disabled = true;
      button.textContent = button.getAttribute("data-busy-label") || button.textContent;
    }
  });
})();
