// New-video form: preview the chosen image before upload and show that a slow upload is under way.
(function () {
  "use strict";
  var form = document.getElementById("new-video-form");
  if (!form) { return; }
  var input = form.querySelector("input[type=file][data-preview]");
  var preview = input ? document.getElementById(input.getAttribute("data-preview")) : null;
  var placeholder = document.getElementById("image-placeholder");
  var previewUrl = null;

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

  if (input) {
    input.addEventListener("change", showPreview);
    showPreview();  // the browser may keep a file chosen before a reload
  }

  form.addEventListener("submit", function () {
    var button = form.querySelector("button[type=submit]");
    if (button) {
      button.disabled = true;
      button.textContent = button.getAttribute("data-busy-label") || button.textContent;
    }
  });
})();
