// pgwarden console: refresh a page's content when what it shows changed, and copy buttons.
// Everything works without this file; it only saves reloads and typing.
(function () {
  "use strict";
  var body = document.body;
  var version = body.dataset.version;
  var poll = Number(body.dataset.poll || 0);

  // Someone typing in a form must not lose it to a refresh: tell them instead.
  function editing() {
    var fields = document.querySelectorAll(
      "main input:not([type=hidden]):not([type=radio]), main textarea");
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].value || fields[i] === document.activeElement) return true;
    }
    return false;
  }

  function announce(text) {
    var live = document.getElementById("live");
    if (!live) return;
    live.textContent = text;
    live.hidden = false;
  }

  function replaceMain() {
    fetch(location.href, { credentials: "same-origin" })
      .then(function (answer) {
        if (answer.redirected || !answer.ok) { location.reload(); return null; }
        return answer.text();
      })
      .then(function (text) {
        if (!text) return;
        var page = new DOMParser().parseFromString(text, "text/html");
        var main = page.querySelector("main");
        if (!main) return;
        document.querySelector("main").replaceWith(main);
        version = page.body.dataset.version;
        document.title = page.title;
      })
      .catch(function () { /* the next poll tries again */ });
  }

  function check() {
    fetch("/console/changes", { credentials: "same-origin" })
      .then(function (answer) {
        if (answer.redirected) { location.reload(); return null; }
        return answer.ok ? answer.json() : null;
      })
      .then(function (doc) {
        if (!doc || doc.version === version) return;
        if (editing()) {
          announce("This page has changed since you opened it: reload to see what is new.");
        } else {
          replaceMain();
        }
      })
      .catch(function () { /* the server may be restarting: keep asking */ })
      .then(function () { setTimeout(check, poll * 1000); });
  }

  if (version && poll > 0) setTimeout(check, poll * 1000);

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    var done = function () { button.textContent = "Copied"; };
    var manual = function () {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(source.textContent).then(done, manual);
    } else {
      manual();
    }
  });
})();
