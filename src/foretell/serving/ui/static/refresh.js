// Refreshes the monitoring page's panels in place every few seconds, so focus and scroll stay
// where the reader left them. Without JavaScript, a <noscript> meta refresh reloads the page.
(function () {
  "use strict";
  var panels = document.getElementById("panels");
  if (!panels || !window.fetch || !window.DOMParser) return;
  var seconds = Number(panels.getAttribute("data-refresh")) || 10;
  function refresh() {
    if (document.hidden) return;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("panels");
        var current = document.getElementById("panels");
        if (fresh && current) current.replaceWith(document.importNode(fresh, true));
      })
      .catch(function () { /* the next tick tries again */ });
  }
  window.setInterval(refresh, seconds * 1000);
})();
