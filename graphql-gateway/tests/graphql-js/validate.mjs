// The reference: graphql-js 16's validate() over the gateway's own API schema
// (read by introspection), for each query in a JSON list. Prints, per query,
// the errors graphql-js reports: message and locations.
//
//   node validate.mjs GRAPHQL_MODULE_DIR GATEWAY_URL QUERIES.json
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const [moduleDir, url, queriesFile] = process.argv.slice(2);
const require = createRequire(moduleDir + "/");
const { buildClientSchema, getIntrospectionQuery, parse, validate, version } = require("graphql");
if (!version.startsWith("16.")) {
  console.error(`graphql ${version} found; the reference is graphql@16`);
  process.exit(2);
}
const introspection = await (await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ query: getIntrospectionQuery() }),
})).json();
const schema = buildClientSchema(introspection.data);
const queries = JSON.parse(readFileSync(queriesFile, "utf8"));
const results = queries.map((query) => {
  let document;
  try {
    document = parse(query);
  } catch (e) {
    return { syntax: true, errors: [{ message: e.message, locations: e.locations ?? [] }] };
  }
  return { syntax: false, errors: validate(schema, document).map((e) => ({ message: e.message, locations: e.locations ?? [] })) };
});
console.log(JSON.stringify({ version, results }));
