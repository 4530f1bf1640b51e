#!/usr/bin/env node
// run_model.js — runs an ONNX model (e.g. one qkit exported) in ONNX Runtime for Node, so tests
// and users can check an export against qkit's own simulation without Python.
//
//   node tools/ort/run_model.js MODEL INPUT.bin SHAPE OUTPUT.bin [--opt disabled|basic|extended|all]
//        [--save-optimized PATH]
//
// INPUT.bin holds raw little-endian float32 values for the model's first input, SHAPE is a
// comma list of its dimensions (e.g. 2,1,28,28); the first output is written to OUTPUT.bin as
// raw little-endian float32. One intra-op thread keeps results independent of the machine.
// --save-optimized writes the graph ONNX Runtime actually ran (e.g. to see which QDQ pairs it
// fused into QLinearConv and friends at --opt all).
'use strict';
const fs = require('fs');
const path = require('path');

function fail(msg) {
  process.stderr.write(`run_model: ${msg}\n`);
  process.exit(1);
}

const usage = 'usage: node run_model.js MODEL INPUT.bin SHAPE OUTPUT.bin ' +
              '[--opt disabled|basic|extended|all] [--save-optimized PATH]';

function parseArgs(argv) {
  const pos = [];
  let opt = 'disabled';
  let saveOptimized = null;
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === '--opt') {
      if (i + 1 >= argv.length) fail(`--opt needs a level\n${usage}`);
      opt = argv[++i];
    } else if (argv[i] === '--save-optimized') {
      if (i + 1 >= argv.length) fail(`--save-optimized needs a path\n${usage}`);
      saveOptimized = argv[++i];
    } else if (argv[i].startsWith('--opt=')) {
      opt = argv[i].slice(6);
    } else if (argv[i] === '-h' || argv[i] === '--help') {
      process.stdout.write(usage + '\n');
      process.exit(0);
    } else {
      pos.push(argv[i]);
    }
  }
  if (pos.length !== 4) fail(`expected 4 positional arguments, got ${pos.length}\n${usage}`);
  if (!['disabled', 'basic', 'extended', 'all'].includes(opt)) {
    fail(`--opt '${opt}' is not one of disabled, basic, extended, all`);
  }
  const shape = pos[2].split(',').map((s) => {
    const d = Number(s);
    if (!Number.isInteger(d) || d <= 0) fail(`shape '${pos[2]}' must be positive integers separated by commas`);
    return d;
  });
  return {model: pos[0], input: pos[1], shape, output: pos[3], opt, saveOptimized};
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let ort;
  try {
    ort = require(path.join(__dirname, 'node_modules', 'onnxruntime-node'));
  } catch (e) {
    fail(`onnxruntime-node is not installed in ${__dirname}/node_modules (run scripts/deps.sh): ${e.message}`);
  }
  if (!fs.existsSync(args.model)) fail(`model '${args.model}' does not exist`);
  let bytes;
  try {
    bytes = fs.readFileSync(args.input);
  } catch (e) {
    fail(`cannot read input '${args.input}': ${e.message}`);
  }
  const count = args.shape.reduce((a, b) => a * b, 1);
  if (bytes.length !== count * 4) {
    fail(`input '${args.input}' has ${bytes.length} bytes, shape [${args.shape}] needs ${count * 4}`);
  }
  const values = new Float32Array(count);
  for (let i = 0; i < count; ++i) values[i] = bytes.readFloatLE(4 * i);

  let session;
  const options = {
    graphOptimizationLevel: args.opt,
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    logSeverityLevel: 3,  // errors only: ORT's warnings would bury ours
  };
  if (args.saveOptimized) options.optimizedModelFilePath = args.saveOptimized;
  try {
    session = await ort.InferenceSession.create(args.model, options);
  } catch (e) {
    fail(`ONNX Runtime cannot load '${args.model}': ${e.message}`);
  }
  const feeds = {};
  feeds[session.inputNames[0]] = new ort.Tensor('float32', values, args.shape);
  let results;
  try {
    results = await session.run(feeds);
  } catch (e) {
    fail(`ONNX Runtime failed to run '${args.model}': ${e.message}`);
  }
  const out = results[session.outputNames[0]];
  if (out.type !== 'float32') fail(`first output '${session.outputNames[0]}' is ${out.type}, expected float32`);
  const buf = Buffer.alloc(out.data.length * 4);
  for (let i = 0; i < out.data.length; ++i) buf.writeFloatLE(out.data[i], 4 * i);
  try {
    fs.writeFileSync(args.output, buf);
  } catch (e) {
    fail(`cannot write output '${args.output}': ${e.message}`);
  }
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
