// patchflow web console: progressive enhancement only. Copyright the patchflow authors, Apache-2.0.
//
// Every page works without this script. With it:
//  * regions marked data-live are refreshed every data-poll-seconds by fetching the same URL and swapping
//    the regions of the same id (short polling, no held connection), except a region holding the focus or a
//    form someone has typed into;
//  * when the wave's state changes (body data-state), the whole page reloads so the right buttons show,
//    unless a form on the page has been edited (a half-written approval comment is never thrown away);
//  * pages marked data-final (a finished wave) stop polling; refreshes carry X-Patchflow-Poll, which the
//    server does not count as activity (an open tab does not keep a session alive), and a refresh that finds
//    the session over reloads the page into the sign-in form;
//  * the sign-in page fills the token from a "#token=…" link (the fragment never reaches the server) and
//    removes it from the address bar.
(function () {
  "use strict";

  function signInFromFragment() {
    var form = document.getElementById("login-form");
    if (!form || !location.hash) { return; }
    var match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!match) { return; }
    history.replaceState(null, "", location.pathname + location.search);
    form.elements.token.value = decodeURIComponent(match[1]);
    form.submit();
  }

  function formsEdited() {
    return document.querySelector("form[data-edited]") !== null;
  }

  function watchEdits() {
    // Delegated, so forms inside refreshed regions are watched too.
    document.addEventListener("input", function (event) {
      var form = event.target.form || (event.target.closest && event.target.closest("form"));
      if (form) { form.setAttribute("data-edited", ""); }
    });
  }

  function poll() {
    var body = document.body;
    var seconds = parseInt(body.getAttribute("data-poll-seconds") || "0", 10);
    if (!seconds || body.hasAttribute("data-final") || !document.querySelector("[data-live]")) { return; }
    var busy = false;
    var timer = setInterval(function () {
      if (busy || document.visibilityState === "hidden") { return; }
      busy = true;
      fetch(location.href, { credentials: "same-origin", headers: { "X-Patchflow-Poll": "1" } })
        .then(function (response) {
          if (response.redirected && /\/ui\/login/.test(response.url) && !formsEdited()) {
            location.reload();  // the session ended: show the sign-in page, which brings the person back here
          }
          if (!response.ok || response.redirected) { throw new Error("stop"); }
          return response.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html");
          var before = body.getAttribute("data-state");
          var after = fresh.body.getAttribute("data-state");
          if (before !== after && !formsEdited()) { location.reload(); return; }
          document.querySelectorAll("[data-live]").forEach(function (region) {
            var next = fresh.getElementById(region.id);
            var busyHere = region.contains(document.activeElement) || region.querySelector("form[data-edited]");
            if (next && !busyHere) { region.replaceWith(document.importNode(next, true)); }
          });
          if (fresh.body.hasAttribute("data-final") && !formsEdited()) { location.reload(); }
        })
        .catch(function () { clearInterval(timer); })
        .then(function () { busy = false; });
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    signInFromFragment();
    watchEdits();
    poll();
  });
})();
