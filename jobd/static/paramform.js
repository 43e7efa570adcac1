// The trigger dialog's form for a job that declares parameters: one input per parameter, made
// from the job's params_schema (GET /api/v1/jobs: a JSON Schema, draft 2020-12).
//
// integer, number → a number input; boolean → a checkbox; enum → a select; array, object → a
// JSON textarea; a secret (writeOnly) → a password input; anything else → a text input. Required
// parameters are marked, descriptions shown, defaults prefilled. The values typed survive the
// refreshes that rebuild the cards (`drafts`), and so do the errors of the last 400 (`errors`).

import { h } from "./dom.js";

export class ParamsError extends Error {
  constructor(param, message) {
    super(`${param}: ${message}`);
    this.param = param;
    this.field = message;
  }
}

// drafts: Map "job\u0000param" → typed text (or a boolean); errors: Map job → {param: message}.
export function paramForm(job, drafts, errors) {
  const schema = job.params_schema;
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const shown = errors.get(job.name) || {};
  const fields = Object.entries(properties).map(([name, prop]) => field(name, prop));
  const element = h("fieldset", { class: "param-form", dataset: { job: job.name } },
    h("legend", {}, "Parameters"),
    fields.map((f) => f.element));

  function field(name, prop) {
    const id = `param-${job.name}-${name}`;
    const key = `${job.name}\u0000${name}`;
    const kind = prop.type || "enum";
    const described = prop.description ? `${id}-about` : undefined;
    let input;
    if (kind === "boolean") {
      input = h("input", { id, type: "checkbox", name, "aria-describedby": described });
      input.checked = drafts.has(key) ? drafts.get(key) : prop.default === true;
      input.addEventListener("change", () => { drafts.set(key, input.checked); forget(name); });
    } else {
      if (kind === "enum") {
        // No choice is made for the user: without a default the select starts empty (and a
        // required one left so is the server's "required" next to it).
        const options = prop.default !== undefined ? [] : [h("option", { value: "" }, "—")];
        input = h("select", { id, name }, options, prop.enum.map((choice, i) =>
          h("option", { value: String(i) }, typeof choice === "string" ? choice : JSON.stringify(choice))));
      } else if (kind === "array" || kind === "object") {
        input = h("textarea", { id, name, rows: 2, spellcheck: "false", placeholder: kind === "array" ? "[ ]" : "{ }" });
      } else {
        const type = prop.writeOnly ? "password" : kind === "integer" || kind === "number" ? "number" : "text";
        input = h("input", {
          id, name, type,
          step: kind === "integer" ? "1" : kind === "number" ? "any" : undefined,
          min: prop.minimum, max: prop.maximum,
          autocomplete: prop.writeOnly ? "off" : undefined,
        });
      }
      if (required.has(name)) input.setAttribute("aria-required", "true");
      if (described) input.setAttribute("aria-describedby", described);
      input.value = drafts.has(key) ? drafts.get(key) : initial(prop);
      input.addEventListener("input", () => { drafts.set(key, input.value); forget(name); });
    }
    const error = h("span", { class: "field-error", id: `${id}-error`, role: "alert" }, shown[name] || "");
    if (shown[name]) input.setAttribute("aria-invalid", "true");
    const element = h("div", { class: `param-field param-${kind}`, dataset: { param: name } },
      h("label", { for: id }, name, required.has(name) ? h("span", { class: "required", title: "required" }, " *") : null,
        h("span", { class: "muted" }, ` ${prop.writeOnly ? "secret" : kind}`)),
      input,
      prop.description ? h("small", { id: described, class: "muted" }, prop.description) : null,
      error);
    return { name, prop, kind, input, error, element, key };
  }

  function initial(prop) {
    if (prop.default === undefined) return "";
    if (prop.enum) return String(prop.enum.findIndex((choice) => JSON.stringify(choice) === JSON.stringify(prop.default)));
    if (typeof prop.default === "object") return JSON.stringify(prop.default);
    return String(prop.default);
  }

  function forget(name) {
    const current = errors.get(job.name);
    if (current) delete current[name];
    const f = fields.find((item) => item.name === name);
    if (f) { f.error.textContent = ""; f.input.removeAttribute("aria-invalid"); }
  }

  // The params to send; an empty optional field is left out (the server fills its default).
  // Throws ParamsError for a value that cannot be read as its type at all.
  function read() {
    const params = {};
    for (const f of fields) {
      if (f.kind === "boolean") {
        params[f.name] = f.input.checked;
        continue;
      }
      const text = f.input.value;
      if (text === "") continue;
      if (f.kind === "enum") params[f.name] = f.prop.enum[Number(text)];
      else if (f.kind === "integer" || f.kind === "number") {
        const value = Number(text);
        if (text.trim() === "" || Number.isNaN(value)) throw new ParamsError(f.name, `must be ${f.kind === "integer" ? "an integer" : "a number"}`);
        params[f.name] = value;
      } else if (f.kind === "array" || f.kind === "object") {
        try {
          params[f.name] = JSON.parse(text);
        } catch (err) {
          throw new ParamsError(f.name, `is not valid JSON (${err.message})`);
        }
      } else params[f.name] = text;
    }
    return params;
  }

  // A 400's errors ([{param, message}]) next to their fields; true when any was shown.
  function showErrors(list) {
    const byName = {};
    for (const item of list || []) byName[item.param] = item.message;
    errors.set(job.name, byName);
    let any = false;
    for (const f of fields) {
      const message = byName[f.name] || "";
      f.error.textContent = message;
      if (message) { f.input.setAttribute("aria-invalid", "true"); any = true; } else f.input.removeAttribute("aria-invalid");
    }
    return any;
  }

  // After a run was accepted: secrets are not kept in the page, the errors are gone.
  function accepted() {
    errors.delete(job.name);
    for (const f of fields) {
      if (f.prop.writeOnly) { drafts.delete(f.key); f.input.value = ""; }
      f.error.textContent = "";
      f.input.removeAttribute("aria-invalid");
    }
  }

  return { element, read, showErrors, accepted, focus: (name) => fields.find((f) => f.name === name)?.input.focus() };
}
