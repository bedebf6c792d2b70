// mnistlab API docs: renders /openapi.json as a list of operations. No libraries, nothing from the network.
"use strict";

(() => {
  const body = document.body;
  const main = document.getElementById("operations");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);  // strings become text: no HTML injection
    }
    return node;
  }

  function resolve(doc, schema) {
    // Local references only ("#/components/schemas/X"): FastAPI writes no others.
    let seen = 0;
    while (schema && schema.$ref && seen++ < 20) {
      schema = schema.$ref.replace(/^#\//, "").split("/").reduce((node, key) => (node || {})[key], doc);
    }
    return schema || {};
  }

  function schemaText(doc, schema) {
    return JSON.stringify(resolve(doc, schema), null, 2);
  }

  function constraints(schema) {
    const parts = [];
    for (const key of ["minimum", "maximum", "minItems", "maxItems", "maxLength", "enum", "default"]) {
      if (schema[key] !== undefined) parts.push(`${key} ${JSON.stringify(schema[key])}`);
    }
    return parts.join(", ");
  }

  function parameters(doc, operation) {
    const list = operation.parameters || [];
    if (!list.length) return null;
    const rows = list.map((p) => {
      const schema = resolve(doc, p.schema);
      const type = schema.type || (schema.enum ? "enum" : (schema.anyOf || []).map((s) => s.type || "").join("|"));
      return el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, type || ""),
                el("td", {}, constraints({ ...schema, default: p.schema && p.schema.default })),
                el("td", {}, p.description || schema.description || ""));
    });
    return el("section", {}, el("h3", {}, "Parameters"),
              el("table", {}, el("tr", {}, ...["name", "in", "type", "limits", "meaning"].map((h) => el("th", {}, h))),
                 ...rows));
  }

  function requestBody(doc, operation) {
    const request = operation.requestBody;
    if (!request) return null;
    const media = Object.entries(request.content || {}).map(([type, entry]) =>
      el("div", { class: "media" }, el("code", {}, type),
         entry.description || (entry.schema && entry.schema.description) ? ` — ${entry.description || entry.schema.description}` : "",
         el("pre", {}, schemaText(doc, entry.schema))));
    return el("section", {}, el("h3", {}, "Request body" + (request.required ? " (required)" : "")),
              el("p", {}, request.description || ""), ...media);
  }

  function responses(doc, operation) {
    const rows = Object.entries(operation.responses || {}).map(([status, answer]) => {
      const content = Object.entries(answer.content || {}).map(([type, entry]) =>
        el("div", {}, el("code", {}, type), el("pre", {}, schemaText(doc, entry.schema))));
      return el("tr", { "data-status": status }, el("td", { class: "status" }, status),
                el("td", {}, answer.description || "", ...content));
    });
    return el("section", {}, el("h3", {}, "Responses"), el("table", {}, ...rows));
  }

  function render(doc) {
    document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version} API`;
    document.getElementById("summary").textContent = doc.info.summary || doc.info.description || "";
    document.title = `${doc.info.title} - API`;
    const secured = Object.keys((doc.components || {}).securitySchemes || {}).length > 0;
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, operation] of Object.entries(item)) {
        const needsToken = secured && (operation.security || []).length > 0;
        const card = el("article", { class: "operation", "data-path": path, "data-method": method },
          el("h2", {}, el("span", { class: `method ${method}` }, method), path),
          el("p", {}, operation.summary || ""),
          operation.description ? el("p", { class: "muted" }, operation.description) : null,
          needsToken ? el("p", { class: "muted" }, "Needs the header Authorization: Bearer TOKEN.") : null,
          parameters(doc, operation), requestBody(doc, operation), responses(doc, operation));
        main.append(card);
      }
    }
    body.dataset.state = "ready";
  }

  fetch("/openapi.json")
    .then((response) => {
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      return response.json();
    })
    .then(render)
    .catch((error) => {
      document.getElementById("summary").textContent = `cannot read /openapi.json (${error.message})`;
      body.dataset.state = "error";
    });
})();
