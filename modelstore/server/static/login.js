// Sign-in page: post the token with fetch() so that a write token can be kept in
// localStorage for the comment form (the server's cookie only reads); on /logout forget it.
(function () {
  "use strict";
  var KEY = "modelstore.token";
  function forget() { try { localStorage.removeItem(KEY); } catch (e) { /* storage disabled */ } }
  if (document.getElementById("signed-out")) { forget(); return; }
  var form = document.getElementById("login-form");
  if (!form) return;
  var box = document.getElementById("login-error");
  function fail(msg) { box.querySelector(".msg").textContent = msg; box.hidden = false; }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var token = form.elements.token.value.trim();
    if (!token) { fail("enter a token"); return; }
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    fetch("/login", {method: "POST", credentials: "same-origin",
                     headers: {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                     body: new URLSearchParams({token: token, next: form.elements.next.value}).toString()})
      .then(function (r) { return r.json().catch(function () { return {}; }).then(function (doc) { return {r: r, doc: doc}; }); })
      .then(function (res) {
        if (!res.r.ok) { fail((res.doc.error && res.doc.error.message) || ("error " + res.r.status)); return; }
        if (res.doc.access === "write") { try { localStorage.setItem(KEY, token); } catch (e) { /* storage disabled */ } }
        else { forget(); }
        window.location.assign(res.doc.next || "/");
      })
      .catch(function (e) { fail("network error: " + e); })
      .then(function () { button.disabled = false; });
  });
})();
