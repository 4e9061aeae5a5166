// The API page (/docs): the monitor's OpenAPI description (/openapi.json) shown as its paths, each with its
// methods, summary, parameters, request body and responses. It asks the server for nothing else.
"use strict";

const METHODS = ["get", "put", "post", "patch", "delete", "head", "options", "trace"];

// "#/components/schemas/HTTPValidationError" -> "HTTPValidationError"
function refName(ref) {
  return ref.split("/").pop();
}

// The schema a "$ref" names in the description (the schema itself when it names none).
function resolve(spec, schema) {
  if (!schema || !schema.$ref) return schema || {};
  const name = refName(schema.$ref);
  return ((spec.components || {}).schemas || {})[name] || {};
}

// A schema as a short type: "integer", "string | null", "one of json, csv", "array of object", a schema's name.
function typeOf(schema) {
  if (!schema || Object.keys(schema).length === 0) return "any";
  if (schema.$ref) return refName(schema.$ref);
  for (const key of ["anyOf", "oneOf"]) if (schema[key]) return schema[key].map(typeOf).join(" | ");
  if (schema.allOf) return schema.allOf.map(typeOf).join(" & ");
  if (schema.enum) return `one of ${schema.enum.join(", ")}`;
  if (schema.type === "array") return `array of ${typeOf(schema.items)}`;
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "object";
  return schema.format ? `${type} (${schema.format})` : type;
}

// A body's or response's schema by name: its "$ref", its title, else its type.
function schemaName(schema) {
  if (!schema || Object.keys(schema).length === 0) return "";
  if (schema.$ref) return refName(schema.$ref);
  return schema.title || typeOf(schema);
}

// What a parameter's schema adds to its type: description, default and bounds.
function notes(parameter) {
  const schema = parameter.schema || {};
  const out = [];
  const description = parameter.description || schema.description;
  if (description) out.push(description);
  if (schema.default !== undefined && schema.default !== null) out.push(`default ${JSON.stringify(schema.default)}`);
  if (schema.minimum !== undefined) out.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) out.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) out.push(`≤ ${schema.maximum}`);
  if (schema.exclusiveMaximum !== undefined) out.push(`< ${schema.exclusiveMaximum}`);
  return out.join("; ");
}

function pathId(path) {
  return `path${path.replace(/[^A-Za-z0-9]+/g, "-")}`;
}

function parameterTable(parameters) {
  const cell = (th, text, cls) => el("td", { "data-th": th, class: cls, text });
  return el("table", { class: "parameters" },
    el("thead", {}, el("tr", {}, ...["Parameter", "In", "Required", "Type", "Notes"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...parameters.map((p) => el("tr", { "data-name": p.name },
      cell("Parameter", p.name, "name"), cell("In", p.in), cell("Required", p.required ? "yes" : "no"),
      cell("Type", typeOf(p.schema)), cell("Notes", notes(p))))));
}

// One entry per content type: "application/json: Body_review…", with the fields of an object schema.
function contentList(spec, content) {
  return el("ul", {}, ...Object.entries(content || {}).map(([type, media]) => {
    const name = schemaName(media.schema);
    const properties = resolve(spec, media.schema).properties;
    const required = resolve(spec, media.schema).required || [];
    const fields = properties && Object.entries(properties).map(([field, schema]) =>
      `${field}: ${typeOf(schema)}${required.includes(field) ? " (required)" : ""}`).join(", ");
    return el("li", { class: "content" }, el("code", { text: type }), name ? `: ${name}` : "",
      fields ? el("span", { class: "fields", text: ` (${fields})` }) : null);
  }));
}

function operation(spec, path, method, op, shared) {
  const parameters = [...shared, ...(op.parameters || [])];
  const details = el("dl");
  if (op.requestBody) {
    details.append(el("dt", { text: `Request body${op.requestBody.required ? " (required)" : ""}` }),
      el("dd", { class: "request" }, contentList(spec, op.requestBody.content)));
  }
  const responses = Object.entries(op.responses || {}).map(([status, response]) => el("li", { "data-status": status },
    el("strong", { text: status }), ` ${response.description || ""}`,
    response.content ? contentList(spec, response.content) : null));
  details.append(el("dt", { text: "Responses" }), el("dd", { class: "responses" }, el("ul", {}, ...responses)));
  return el("article", { class: "operation", "data-method": method.toUpperCase(), "data-path": path },
    el("header", {}, el("span", { class: `method method-${method}`, text: method.toUpperCase() }),
      el("code", { class: "path", text: path })),
    op.summary ? el("p", { class: "summary", text: op.summary }) : null,
    op.description ? el("p", { class: "description", text: op.description }) : null,
    op.deprecated ? el("p", { class: "error", text: "deprecated" }) : null,
    parameters.length ? parameterTable(parameters) : el("p", { class: "muted", text: "No parameters." }),
    details);
}

function render(spec) {
  const info = spec.info || {};
  if (info.title) {
    document.title = `API · ${info.title}`;
    document.getElementById("title").textContent = `API of the ${info.title}`;
  }
  const about = [info.description, info.version && `Version ${info.version}, OpenAPI ${spec.openapi}.`];
  document.getElementById("description").textContent = about.filter(Boolean).join(" ");
  const paths = Object.entries(spec.paths || {});
  document.getElementById("index").replaceChildren(...paths.map(([path]) => el("a", { href: `#${pathId(path)}` },
    el("code", { text: path }))));
  document.getElementById("operations").replaceChildren(...paths.map(([path, item]) => el("section",
    { class: "api-path", id: pathId(path) }, el("h2", {}, el("code", { text: path })),
    ...METHODS.filter((m) => item[m]).map((m) => operation(spec, path, m, item[m], item.parameters || [])))));
  if (!paths.length) say("the OpenAPI description lists no paths", "info");
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

reported(api("/openapi.json").then(render));
