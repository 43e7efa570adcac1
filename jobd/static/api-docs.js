// Renders jobd's OpenAPI document (/api/v1/openapi.json) as a reference page. No dependencies.

const SOURCE = "/api/v1/openapi.json";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

function anchor(kind, name) {
  return `${kind}-${name.replace(/[^A-Za-z0-9_-]+/g, "-")}`;
}

function typeLabel(schema) {
  if (!schema || Object.keys(schema).length === 0 || (schema.description && Object.keys(schema).length === 1)) {
    return "any";
  }
  if (schema.$ref) return el("a", { href: `#${anchor("schema", refName(schema.$ref))}` }, refName(schema.$ref));
  if (schema.anyOf || schema.oneOf) {
    const parts = (schema.anyOf || schema.oneOf).map(typeLabel);
    const out = el("span");
    parts.forEach((part, i) => out.append(i ? " | " : "", part));
    return out;
  }
  let type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
  if (schema.type === "array" && schema.items) {
    return el("span", {}, "array of ", typeLabel(schema.items));
  }
  if (schema.enum) type += ` (${schema.enum.map((v) => JSON.stringify(v)).join(", ")})`;
  const limits = [];
  if (schema.minimum !== undefined) limits.push(`≥ ${schema.minimum}`);
  if (schema.maximum !== undefined) limits.push(`≤ ${schema.maximum}`);
  if (schema.maxLength !== undefined) limits.push(`≤ ${schema.maxLength} chars`);
  if (schema.default !== undefined) limits.push(`default ${JSON.stringify(schema.default)}`);
  if (schema.format) limits.push(schema.format);
  return limits.length ? `${type}, ${limits.join(", ")}` : type;
}

function schemaTree(schema) {
  if (!schema || schema.$ref || schema.type !== "object" || !schema.properties) {
    return el("div", { class: "schema" }, el("code", {}, typeLabel(schema)),
      schema && schema.description ? el("span", { class: "desc" }, " — ", schema.description) : null);
  }
  const required = new Set(schema.required || []);
  const list = el("ul");
  for (const [name, prop] of Object.entries(schema.properties)) {
    const nested = prop.type === "object" && prop.properties ? schemaTree(prop) : null;
    list.append(el("li", {},
      el("code", {}, name), ": ", el("span", { class: "type" }, nested ? "object" : typeLabel(prop)),
      required.has(name) ? "" : el("span", { class: "req" }, " optional"),
      prop.description ? el("span", { class: "desc" }, " — ", prop.description) : null,
      nested));
  }
  if (schema.additionalProperties !== false) list.append(el("li", { class: "desc" }, "… and other fields"));
  return el("div", { class: "schema" }, schema.description ? el("p", { class: "desc" }, schema.description) : null,
    list);
}

function parameters(op) {
  if (!op.parameters || op.parameters.length === 0) return null;
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "type"),
      el("th", {}, "description"))),
    el("tbody", {}, op.parameters.map((p) => el("tr", {},
      el("td", {}, el("code", {}, p.name), p.required ? el("span", { class: "req" }, " required") : ""),
      el("td", {}, p.in), el("td", {}, typeLabel(p.schema)), el("td", {}, p.description || "")))));
}

function content(block) {
  if (!block || !block.content) return null;
  return Object.entries(block.content).map(([media, body]) =>
    el("div", {}, el("code", {}, media), body.schema ? schemaTree(body.schema) : null));
}

function operation(path, method, op) {
  const id = anchor("op", op.operationId || `${method}-${path}`);
  const responses = el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "answer"))),
    el("tbody", {}, Object.entries(op.responses || {}).map(([status, response]) => el("tr", {},
      el("td", {}, el("code", {}, status)),
      el("td", {}, response.description || "", content(response))))));
  return el("section", { class: "op", id },
    el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), el("span", { class: "summary" }, op.summary || ""),
      op["x-jobd-scope"] ? el("span", { class: "scope", title: "scope needed" }, `scope: ${op["x-jobd-scope"]}`)
        : el("span", { class: "scope" }, "no token needed")),
    op.description ? el("p", {}, op.description) : null,
    parameters(op),
    op.requestBody ? el("div", {}, el("h4", {}, "Body"), content(op.requestBody)) : null,
    el("h4", {}, "Responses"), responses);
}

function render(doc) {
  const main = document.getElementById("content");
  const toc = document.getElementById("toc");
  main.replaceChildren();
  document.getElementById("intro").append(" ", `Version ${doc.info.version}. `, doc.info.description || "");
  const byTag = new Map((doc.tags || []).map((t) => [t.name, []]));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([path, method, op]);
    }
  }
  const tocList = el("ul");
  for (const [tag, ops] of byTag) {
    if (ops.length === 0) continue;
    main.append(el("h2", { id: anchor("tag", tag) }, tag));
    tocList.append(el("li", {}, el("a", { href: `#${anchor("tag", tag)}` }, tag)));
    for (const [path, method, op] of ops) main.append(operation(path, method, op));
  }
  main.append(el("h2", { id: "schemas" }, "Schemas"));
  tocList.append(el("li", {}, el("a", { href: "#schemas" }, "schemas")));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    main.append(el("section", { class: "op", id: anchor("schema", name) }, el("h3", {}, name), schemaTree(schema)));
  }
  toc.replaceChildren(tocList);
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

fetch(SOURCE, { headers: { Accept: "application/json" } })
  .then((response) => {
    if (!response.ok) throw new Error(`${SOURCE} answered ${response.status}`);
    return response.json();
  })
  .then(render)
  .catch((error) => {
    document.getElementById("status").textContent = `Could not load the document: ${error.message}`;
  });
