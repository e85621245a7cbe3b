/* zis-connect.js: connect an OAuth provider from the host's own pages, in a popup.
 *
 *   <script src="/admin/connections/static/zis-connect.js"></script>
 *   ZISConnect.open({integration: "crm", client: "hubspot", name: "main", scopes: "read"})
 *     .then(code => ...)            // the verification code: exchange it at access_codes
 *     .catch(err => ...);           // err.error: the provider's error (access_denied, ...)
 *
 * Call open() from a click handler: the popup is opened at once (a window opened after
 * an await is blocked), then pointed at the flow.  The page needs no API token: the
 * console starts the flow as the admin's browser session (CSRF token fetched from the
 * console).  A host backend that starts flows itself passes {startUrl} instead.  When
 * the popup is blocked, the whole page goes to the provider and comes back to
 * {returnTo} (default: this page) with ?verification_code= or ?error=;
 * ZISConnect.fromRedirect() reads it.  The same file, loaded by the console's landing
 * page in the popup, hands the result back with postMessage to this site's origin.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var scriptUrl = new URL(script ? script.src : window.location.href, window.location.href);
  var base = scriptUrl.href.replace(/\/static\/zis-connect\.js(\?.*)?$/, "");
  var consoleOrigin = scriptUrl.origin;

  function failure(error, description) {
    var err = new Error(description || error);
    err.error = error;
    return err;
  }

  function json(resp) {
    return resp.json().catch(function () { return {}; }).then(function (data) {
      if (!resp.ok) {
        var detail = data && data.error ? data.error : "HTTP " + resp.status;
        throw failure("start_failed", "Starting the connection failed: " + detail);
      }
      return data;
    });
  }

  function startFlow(opts, returnTo) {
    return fetch(base + "/connect/" + encodeURIComponent(opts.integration) + "/csrf", {
      credentials: "same-origin"
    }).then(json).then(function (data) {
      var body = {integration: opts.integration, client: opts.client, name: opts.name};
      if (opts.scopes) { body.scopes = Array.isArray(opts.scopes) ? opts.scopes.join(" ") : opts.scopes; }
      if (returnTo) { body.return_to = returnTo; }
      return fetch(base + "/connect/start", {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": data.csrf_token},
        body: JSON.stringify(body)
      });
    }).then(json).then(function (data) { return data.redirect_url; });
  }

  function open(opts) {
    opts = opts || {};
    var popup = window.open("about:blank", "zis-connect",
                            "popup,width=" + (opts.width || 600) + ",height=" + (opts.height || 720));
    if (!popup) {
      // Blocked: the plain redirect, back to this page (or returnTo).
      var returnTo = opts.returnTo || window.location.href.split("?")[0];
      var go = opts.startUrl ? Promise.resolve(opts.startUrl) : startFlow(opts, returnTo);
      return go.then(function (url) {
        window.location.assign(url);
        return new Promise(function () {});  // the page is leaving
      });
    }
    return new Promise(function (resolve, reject) {
      var settled = false;
      var watch = null;
      function finish(fn, value) {
        if (settled) { return; }
        settled = true;
        window.removeEventListener("message", onMessage);
        if (watch) { window.clearInterval(watch); }
        fn(value);
      }
      function onMessage(event) {
        // Only our own landing page, in the window we opened, may answer.
        if (event.origin !== consoleOrigin || event.source !== popup) { return; }
        var data = event.data;
        if (!data || data.type !== "zis-connect") { return; }
        if (data.verification_code) { finish(resolve, data.verification_code); }
        else { finish(reject, failure(String(data.error || "unknown_error"))); }
      }
      window.addEventListener("message", onMessage);
      watch = window.setInterval(function () {
        if (popup.closed) {
          // A message posted just before closing is delivered first; give it a moment.
          window.setTimeout(function () { finish(reject, failure("popup_closed", "The window was closed.")); }, 300);
          window.clearInterval(watch);
        }
      }, 250);
      var go = opts.startUrl ? Promise.resolve(opts.startUrl) : startFlow(opts, null);
      go.then(function (url) { popup.location.href = url; }, function (err) {
        popup.close();
        finish(reject, err);
      });
    });
  }

  function fromRedirect() {
    var params = new URLSearchParams(window.location.search);
    var code = params.get("verification_code");
    var error = params.get("error");
    if (code) { return {verification_code: code}; }
    if (error) { return {error: error}; }
    return null;
  }

  function landing() {
    var el = document.getElementById("zis-connect-done");
    if (!el) { return; }
    var code = el.getAttribute("data-verification-code");
    var message = {type: "zis-connect"};
    if (code) { message.verification_code = code; }
    else { message.error = el.getAttribute("data-error") || "unknown_error"; }
    if (window.opener && !window.opener.closed) {
      // Aimed at this site's own origin: another site's page that opened us gets nothing.
      window.opener.postMessage(message, window.location.origin);
      var status = document.getElementById("zis-connect-status");
      if (status) { status.textContent = "Done: this window closes now."; }
      window.close();
    }
  }

  window.ZISConnect = {open: open, fromRedirect: fromRedirect};
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", landing); }
  else { landing(); }
})();
