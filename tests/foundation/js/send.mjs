// Sends traces to recohop's OTLP/HTTP receiver with the OpenTelemetry JS SDK, as a Node or browser service does:
// `node send.mjs BASE_URL COUNT` sends COUNT traces over OTLP/JSON (exporter-trace-otlp-http) and COUNT over
// gzip-compressed OTLP/protobuf (exporter-trace-otlp-proto), then prints one JSON line with each export's result.
import { OTLPTraceExporter as JsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as ProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';

const [baseUrl, countArg] = process.argv.slice(2);
const count = Number(countArg ?? '3');

async function send(name, exporter) {
  const results = [];
  const recording = {
    export(spans, done) {
      exporter.export(spans, (result) => { results.push(result.code); done(result); });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush(),
  };
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': `js-${name}` }),
    spanProcessors: [new SimpleSpanProcessor(recording)],
  });
  const tracer = provider.getTracer('recohop.tests.js');
  for (let i = 0; i < count; i++) {
    const root = tracer.startSpan('reco.generate', { attributes: { 'reco.request_id': `${name}-${i}`, 'reco.num_results': i } });
    root.setStatus({ code: 2, message: 'model store timeout' });
    root.end();
  }
  await provider.forceFlush();
  await provider.shutdown();
  return results;
}

const json = await send('json', new JsonExporter({ url: `${baseUrl}/v1/traces` }));
const proto = await send('proto', new ProtoExporter({ url: `${baseUrl}/v1/traces`, compression: 'gzip' }));
console.log(JSON.stringify({ json, proto }));
