// berth's console: the one script. It follows a running build's log (the
// page works without it: reload to see more) and asks before the buttons
// that remove things in bulk. No inline script anywhere: the console's
// Content-Security-Policy allows scripts from berth itself only.
"use strict";
(function () {
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        e.preventDefault();
      }
    });
  });

  var pre = document.querySelector("pre[data-follow]");
  if (!pre || !window.fetch || !window.TextDecoder || !window.ReadableStream) {
    return;
  }
  var note = document.getElementById("log-note");
  var say = function (text) {
    if (note) {
      note.textContent = text;
    }
  };
  fetch(pre.getAttribute("data-follow"), { credentials: "same-origin" })
    .then(function (resp) {
      if (!resp.ok || !resp.body) {
        return resp.text().then(function (t) {
          say("The log cannot be followed now (" + resp.status + "): reload to see more. " + t.slice(0, 300));
        });
      }
      say("Following the log…");
      var reader = resp.body.getReader();
      var decoder = new TextDecoder();
      var first = true;
      var pump = function () {
        return reader.read().then(function (r) {
          if (r.done) {
            say("The build has ended.");
            window.setTimeout(function () { window.location.reload(); }, 1500);
            return;
          }
          var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
          if (first) {
            // The stream starts at the log's beginning: it replaces the
            // tail the page was rendered with.
            pre.textContent = "";
            first = false;
          }
          pre.appendChild(document.createTextNode(decoder.decode(r.value, { stream: true })));
          if (atEnd) {
            pre.scrollTop = pre.scrollHeight;
          }
          return pump();
        });
      };
      return pump();
    })
    .catch(function () {
      say("The log stream was interrupted: reload to see more.");
    });
})();
