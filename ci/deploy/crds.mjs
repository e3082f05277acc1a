// Validates the Prometheus Operator objects of a rendered chart (ServiceMonitor, PrometheusRule)
// against the CRDs' schemas, which kubernetes-validate does not hold: the generated validators of
// @kubernetes-models/prometheus-operator, installed in $TOOLS by ci/deploy/tools.sh.
//   python -c 'yaml to json' < render.yaml | node ci/deploy/crds.mjs
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const models = pathToFileURL(
  `${process.env.TOOLS}/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js`,
).href;
const v1 = await import(models);
let checked = 0;
let failed = 0;
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  if (object.apiVersion !== "monitoring.coreos.com/v1") continue;
  const Model = v1[object.kind];
  if (!Model) {
    console.log(`FAIL ${object.kind}: no schema`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    checked++;
  } catch (e) {
    console.log(`FAIL ${object.kind}/${object.metadata.name}: ${e.message}`);
    failed++;
  }
}
console.log(`${checked} Prometheus Operator objects valid, ${failed} invalid`);
process.exit(failed ? 1 : 0);
