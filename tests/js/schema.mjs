// The schema as GraphQL tools see it, compared with the committed ones.
//
//   node schema.mjs <graphql-url> <docs/schema.graphql> <docs/contract.graphql>
//
// Sends graphql-js's standard introspection query (what GraphiQL, Apollo, graphql-codegen,
// Insomnia and Postman send), builds the schema from the answer, and prints one JSON object:
//   introspection: "ok" or the errors the server returned;
//   sameAsCommitted: whether the served schema prints exactly like docs/schema.graphql
//     (both sorted, so declaration order does not matter); diff: the first differing lines;
//   changes: every change from each committed baseline to the served schema, classified as
//     graphql-js does (BREAKING or DANGEROUS; additions are safe and not listed), each with
//     `allowed`: a breaking change is allowed only where the baseline marked the element
//     @deprecated with "removal after YYYY-MM-DD" in the reason and that date has passed.
import { readFileSync } from "node:fs";
import {
  buildClientSchema,
  buildSchema,
  findBreakingChanges,
  findDangerousChanges,
  getIntrospectionQuery,
  lexicographicSortSchema,
  printSchema,
} from "graphql";

const [url, committedPath, contractPath] = process.argv.slice(2);
const out = { introspection: "ok", sameAsCommitted: false, diff: [], changes: [] };

const response = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ query: getIntrospectionQuery(), operationName: "IntrospectionQuery" }),
});
const body = await response.json();
if (body.errors || !body.data) {
  out.introspection = body.errors ?? `HTTP ${response.status}`;
  console.log(JSON.stringify(out));
  process.exit(0);
}
const served = lexicographicSortSchema(buildClientSchema(body.data));

function deprecatedUntil(schema, coordinate) {
  // coordinate: "Type.field", "Type.field.arg" or "Enum.VALUE"
  const [typeName, member, arg] = coordinate.split(".");
  const type = schema.getType(typeName);
  if (!type || !member) return null;
  let element = null;
  if (typeof type.getFields === "function") {
    const field = type.getFields()[member];
    element = arg && field?.args ? field.args.find((a) => a.name === arg) : field;
  } else if (typeof type.getValue === "function") {
    element = type.getValue(member);
  }
  const reason = element?.deprecationReason;
  const match = reason && /removal after (\d{4}-\d{2}-\d{2})/i.exec(reason);
  return match ? match[1] : null;
}

function classify(name, baseline) {
  const today = new Date().toISOString().slice(0, 10);
  const changes = [
    ...findBreakingChanges(baseline, served).map((c) => ({ ...c, level: "BREAKING" })),
    ...findDangerousChanges(baseline, served).map((c) => ({ ...c, level: "DANGEROUS" })),
  ];
  for (const change of changes) {
    const coordinate = (/^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*){0,2})/.exec(change.description) ?? [])[1] ?? "";
    const until = deprecatedUntil(baseline, coordinate);
    out.changes.push({
      baseline: name,
      level: change.level,
      type: change.type,
      description: change.description,
      allowed: change.level !== "BREAKING" || (until !== null && until <= today),
    });
  }
}

const committed = lexicographicSortSchema(buildSchema(readFileSync(committedPath, "utf8")));
const servedText = printSchema(served);
const committedText = printSchema(committed);
out.sameAsCommitted = servedText === committedText;
if (!out.sameAsCommitted) {
  const a = servedText.split("\n");
  const b = committedText.split("\n");
  for (let i = 0; i < Math.max(a.length, b.length) && out.diff.length < 10; i++) {
    if (a[i] !== b[i]) out.diff.push({ line: i + 1, served: a[i] ?? null, committed: b[i] ?? null });
  }
}
classify("docs/schema.graphql", committed);
classify("docs/contract.graphql", buildSchema(readFileSync(contractPath, "utf8")));
console.log(JSON.stringify(out));
