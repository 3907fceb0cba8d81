// The version page's comment form: POST /api/versions/{ref}/comments with fetch(). When the
// server needs a token, ask for it once and keep it in localStorage (sent as a Bearer token).
(function () {
  "use strict";
  var form = document.getElementById("comment-form");
  if (!form) return;
  var KEY = "modelstore.token";
  var text = document.getElementById("comment-text");
  var tokenField = form.querySelector(".token-field");
  var tokenInput = document.getElementById("comment-token");
  var status = document.getElementById("comment-status");
  var list = document.getElementById("comment-list");
  var count = document.getElementById("comment-count");
  function stored() { try { return localStorage.getItem(KEY) || ""; } catch (e) { return ""; } }
  function askToken(msg) { tokenField.hidden = false; tokenInput.focus(); if (msg) say(msg, "bad"); }
  function say(msg, state) { status.textContent = msg; status.className = "form-status" + (state ? " " + state : ""); }
  if (form.dataset.needsToken === "1" && !stored()) tokenField.hidden = false;

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var body = text.value;
    if (!body.trim()) { say("Write something first.", "bad"); return; }
    var token = tokenInput.value.trim() || stored();
    var headers = {"Content-Type": "application/json"};
    if (token) headers.Authorization = "Bearer " + token;
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    say("Posting…");
    fetch("/api/versions/" + form.dataset.ref.split("/").map(encodeURIComponent).join("/") + "/comments",
          {method: "POST", headers: headers, body: JSON.stringify({text: body})})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (doc) { return {r: r, doc: doc}; });
      })
      .then(function (res) {
        var r = res.r, doc = res.doc;
        if (r.status === 401 || r.status === 403) {
          try { localStorage.removeItem(KEY); } catch (e) { /* private mode */ }
          askToken((doc.error && doc.error.message) || "This server needs a write token.");
          return;
        }
        if (!r.ok) { say((doc.error && doc.error.message) || ("Error " + r.status), "bad"); return; }
        if (token) { try { localStorage.setItem(KEY, token); } catch (e) { /* private mode */ } }
        tokenField.hidden = true;
        tokenInput.value = "";
        var li = document.createElement("li");
        var head = document.createElement("div");
        head.className = "comment-head";
        var who = document.createElement("strong");
        who.textContent = doc.author || "you";
        var when = document.createElement("span");
        when.className = "muted";
        when.textContent = " " + String(doc.created || "").replace("T", " ").slice(0, 19) + "Z";
        head.appendChild(who); head.appendChild(when);
        var t = document.createElement("div");
        t.className = "comment-text";
        t.textContent = doc.text;  // text, never HTML
        li.appendChild(head); li.appendChild(t);
        list.appendChild(li);
        count.textContent = String(list.children.length);
        text.value = "";
        say("Posted.", "ok");
      })
      .catch(function (e) { say("Network error: " + e, "bad"); })
      .then(function () { button.disabled = false; });
  });
})();
