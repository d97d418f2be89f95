// ort_bench.js — the models bench/torch_SUITE.py exported (FMSEG_BENCH_ONNX)
// run in ONNX Runtime, the CPU runtime people pick instead of PyTorch
// (npm's onnxruntime-node, CPU provider): as many intra-op threads as
// fmseg (FMSEG_THREADS, else every CPU), sequential execution, every graph
// optimisation, threads that wait passively (allow_spinning 0, as
// OMP_WAIT_POLICY=passive for fmseg and PyTorch); random inputs, warm-up
// runs, the median of the timed ones. Writes build/bench/ort_SUITE.json,
// which bench/benchlib.lua reads for the t/ort column.
//
//   NODE_PATH=build/bench/node/node_modules node bench/ort_bench.js SUITE [ONNX_DIR]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const ort = require('onnxruntime-node');

const suite = process.argv[2];
if (!suite) { console.error('usage: ort_bench.js SUITE [ONNX_DIR]'); process.exit(2); }
const root = path.join(__dirname, '..', 'build', 'bench');
const dir = path.join(process.argv[3] || path.join(root, 'onnx'), suite);
const manifestPath = path.join(dir, 'manifest.json');
if (!fs.existsSync(manifestPath)) {
  console.log(`ort_bench ${suite}: no exported models (${manifestPath})`);
  process.exit(0);
}
const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
const threads = parseInt(process.env.FMSEG_THREADS || '', 10) || os.cpus().length;
const version = require('onnxruntime-node/package.json').version;

function randomInput(shape) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) { s = (s * 1103515245 + 12345) >>> 0; data[i] = (s / 4294967296) * 4 - 2; }
  return new ort.Tensor('float32', data, shape);
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

(async () => {
  const models = {};
  console.log(`onnxruntime-node ${version} (${suite}), ${threads} threads, load average ` +
              os.loadavg().map(v => v.toFixed(2)).join(' '));
  for (const [name, m] of Object.entries(manifest)) {
    const session = await ort.InferenceSession.create(path.join(dir, m.file), {
      intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
      graphOptimizationLevel: 'all', extra: { session: { intra_op: { allow_spinning: '0' } } },
    });
    const feeds = {};
    for (const input of m.inputs) feeds[input.name] = randomInput(input.shape);
    for (let i = 0; i < Math.max(m.warmup, 1); i++) await session.run(feeds);
    const times = [];
    for (let i = 0; i < m.repeats; i++) {
      const t0 = process.hrtime.bigint();
      await session.run(feeds);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    const ms = median(times);
    models[name] = { ms, runs: times.length, rss_mb: process.memoryUsage().rss / 1048576 };
    console.log(`${name.padEnd(30)} ${ms.toFixed(1).padStart(10)} ms`);
    await session.release();
  }
  fs.writeFileSync(path.join(root, `ort_${suite}.json`), JSON.stringify({ ort: version, threads, models }, null, 1));
})().catch(e => { console.error(`ort_bench ${suite}: ${e.message}`); process.exit(1); });
