// The Documents panel: upload, list and delete documents with the admin key. No build step.
"use strict";

(() => {
  const keyForm = document.getElementById("admin-key-form");
  const keyInput = document.getElementById("admin-key");
  const uploadForm = document.getElementById("upload-form");
  const fileInput = document.getElementById("files");
  const dropZone = document.getElementById("drop-zone");
  const uploadButton = document.getElementById("upload");
  const progressBar = document.getElementById("upload-progress");
  const uploadStatus = document.getElementById("upload-status");
  const uploadResults = document.getElementById("upload-results");
  const listBox = document.getElementById("document-list");
  const rows = document.getElementById("document-rows");
  const countCaption = document.getElementById("document-count");
  const moreButton = document.getElementById("more-documents");
  const STATUS_LABELS = { created: "added", updated: "replaced", unchanged: "unchanged", error: "not added" };
  // Of the whole bar: sending the bytes, then the server's parsing and embedding.
  const SEND_SHARE = 20;
  let nextOffset = null;

  keyInput.value = sessionStorage.getItem("adminKey") || "";

  function node(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = text;
    return made;
  }

  function authHeaders(extra) {
    return { ...extra, Authorization: `Bearer ${keyInput.value}` };
  }

  async function failure(response) {
    try {
      const body = await response.json();
      return `${body.error.message} (${response.status})`;
    } catch {
      return `The server answered ${response.status}.`;
    }
  }

  function escapedId(id) {
    // "." too: the browser would resolve "." and ".." path segments itself.
    return encodeURIComponent(id).replace(/\./g, "%2E");
  }

  async function loadDocuments(reset) {
    const offset = reset ? 0 : nextOffset;
    let response;
    try {
      response = await fetch(`/v1/documents?limit=50&offset=${offset}`, { headers: authHeaders({}) });
    } catch {
      uploadStatus.textContent = "The gateway cannot be reached.";
      return;
    }
    if (!response.ok) {
      uploadStatus.textContent = await failure(response);
      uploadForm.hidden = response.status === 401 || response.status === 403;
      listBox.hidden = uploadForm.hidden;
      return;
    }
    const page = await response.json();
    uploadForm.hidden = false;
    listBox.hidden = false;
    if (reset) rows.replaceChildren();
    for (const doc of page.documents) rows.append(documentRow(doc));
    countCaption.textContent = `${page.total} document${page.total === 1 ? "" : "s"} in ${page.collection}`;
    nextOffset = page.next_offset;
    moreButton.hidden = nextOffset === null;
  }

  function documentRow(doc) {
    const row = node("tr");
    const title = doc.title || doc.id;
    row.append(node("td", null, title), node("td", null, doc.source || doc.id), node("td", null, doc.type || "record"));
    row.append(node("td", null, String(doc.chunks)), node("td", null, (doc.ingested_at || "").replace("T", " ").replace("Z", "")));
    const cell = node("td");
    const remove = node("button", null, "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete ${title}`);
    remove.addEventListener("click", () => deleteDocument(doc, title, remove));
    cell.append(remove);
    row.append(cell);
    return row;
  }

  async function deleteDocument(doc, title, button) {
    if (!window.confirm(`Delete "${title}" (${doc.id})? It will no longer be searched.`)) return;
    button.disabled = true;
    try {
      const response = await fetch(`/v1/documents/${escapedId(doc.id)}`, { method: "DELETE", headers: authHeaders({}) });
      const message = response.ok ? `Deleted ${title}.` : await failure(response);
      // The list first, then the news: what the status says is what the table shows.
      await loadDocuments(true);
      uploadStatus.textContent = message;
    } catch {
      uploadStatus.textContent = "The gateway cannot be reached.";
      button.disabled = false;
    }
    keyInput.focus();
  }

  function showResult(result) {
    const label = STATUS_LABELS[result.status] || result.status;
    const text = result.error
      ? `${result.file}: ${label} — ${result.error.message}`
      : `${result.file}: ${label} (${result.chunks} chunks)`;
    uploadResults.append(node("li", result.error ? "error" : null, text));
  }

  function upload(files) {
    const data = new FormData();
    for (const file of files) data.append("file", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/files");
    for (const [name, value] of Object.entries(authHeaders({ Accept: "application/x-ndjson" }))) {
      request.setRequestHeader(name, value);
    }
    let sent = 0;
    let serverShare = 0;
    let read = 0;
    const show = (text) => {
      progressBar.value = Math.round(SEND_SHARE * sent + (100 - SEND_SHARE) * serverShare);
      if (text) uploadStatus.textContent = text;
    };
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) sent = event.loaded / event.total;
      show(`Sending… ${Math.round(sent * 100)}%`);
    };
    const onEvent = (event) => {
      const total = event.files || files.length;
      const index = event.index ?? 0;
      if (event.event === "parsing") {
        serverShare = (index + 0.1) / total;
        show(`Reading ${event.file} (${index + 1} of ${total})…`);
      } else if (event.event === "embedding" && event.total) {
        serverShare = (index + 0.1 + 0.9 * (event.done / event.total)) / total;
        show(`Indexing ${event.file}: ${event.done} of ${event.total} chunks`);
      } else if (event.event === "file_done") {
        serverShare = (index + 1) / total;
        showResult(event);
        show();
      } else if (event.event === "done") {
        serverShare = 1;
        const failed = event.files.filter((f) => f.status === "error").length;
        show(`Done: ${event.files.length - failed} of ${event.files.length} files added or up to date.`);
      } else if (event.event === "error") {
        show(`Upload failed: ${event.error.message}`);
      }
    };
    request.onprogress = () => {
      // Whole lines only; the last one may still be arriving.
      const text = request.responseText;
      const end = text.lastIndexOf("\n");
      if (end <= read) return;
      for (const line of text.slice(read, end).split("\n")) {
        if (!line.trim()) continue;
        onEvent(JSON.parse(line));
      }
      read = end + 1;
    };
    return new Promise((resolve) => {
      request.onload = async () => {
        if (request.status !== 200) {
          let message = `The server answered ${request.status}.`;
          try { message = `${JSON.parse(request.responseText).error.message} (${request.status})`; } catch {}
          show(`Upload failed: ${message}`);
        } else {
          request.onprogress();
        }
        resolve();
      };
      request.onerror = () => { show("Upload failed: the gateway cannot be reached."); resolve(); };
      request.send(data);
    });
  }

  keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem("adminKey", keyInput.value);
    await loadDocuments(true);
  });

  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!fileInput.files.length) {
      uploadStatus.textContent = "Choose or drop at least one file first.";
      fileInput.focus();
      return;
    }
    uploadButton.disabled = true;
    uploadResults.replaceChildren();
    progressBar.hidden = false;
    progressBar.value = 0;
    try {
      await upload(fileInput.files);
      fileInput.value = "";
      await loadDocuments(true);
    } finally {
      uploadButton.disabled = false;
    }
  });

  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, (event) => { event.preventDefault(); dropZone.classList.add("over"); });
  }
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("over");
    if (event.dataTransfer?.files.length) {
      fileInput.files = event.dataTransfer.files;
      uploadForm.requestSubmit();
    }
  });

  moreButton.addEventListener("click", () => loadDocuments(false));
})();
