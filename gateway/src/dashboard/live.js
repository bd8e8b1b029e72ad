// The live event feed: new events from the server's stream are added on top of the table.
// Text only (textContent), never HTML from the stream.
(function () {
  "use strict";
  var table = document.querySelector("table#events[data-live] tbody");
  var status = document.getElementById("live-status");
  if (!table || !window.EventSource) { return; }
  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text || "";
    row.appendChild(td);
    return td;
  }
  function shortTime(t) { return t ? t.slice(5, 10) + " " + t.slice(11, 16) : ""; }
  var source = new EventSource("/ui/events/stream");
  source.onopen = function () { if (status) { status.textContent = "Live: new events appear as they happen."; } };
  source.onerror = function () { if (status) { status.textContent = "Reconnecting to the event stream…"; } };
  source.onmessage = function (message) {
    var e;
    try { e = JSON.parse(message.data); } catch (_) { return; }
    var row = document.createElement("tr");
    row.className = "fresh";
    cell(row, shortTime(e.at));
    var kind = cell(row, "");
    var span = document.createElement("span");
    span.className = "kind k-" + String(e.kind || "").split(".")[0];
    span.textContent = e.kind;
    kind.appendChild(span);
    var dev = cell(row, "");
    if (e.device_id) {
      var a = document.createElement("a");
      a.href = "/devices/" + encodeURIComponent(e.device_id);
      a.textContent = e.device_id;
      dev.appendChild(a);
    }
    cell(row, e.actor);
    cell(row, e.reason);
    table.insertBefore(row, table.firstChild);
    while (table.rows.length > 500) { table.deleteRow(table.rows.length - 1); }
  };
})();
