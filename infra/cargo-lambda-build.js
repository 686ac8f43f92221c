'use strict';

// Local Serverless plugin: builds the functions' zips with cargo lambda before packaging, so
// that `sls package` / `sls deploy` / `sls deploy function` always ship the current code.
//
// Each function key is the name of its binary (crates/functions/src/bin/<function>.rs); cargo
// lambda writes ${CARGO_TARGET_DIR:-target}/lambda/<function>/bootstrap.zip. The plugin then
// copies it to <function>.zip beside it, the function's `package.artifact` in serverless.yml: the framework
// uploads every artifact under its file name, so the functions' `bootstrap.zip`s would
// overwrite each other in the deployment bucket and every function would get the last one.
// SKIP_CARGO_LAMBDA_BUILD=1 skips the build (the zips must then exist already); the copy
// always happens.

const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

class CargoLambdaBuild {
  constructor(serverless, options, { log } = {}) {
    this.serverless = serverless;
    this.options = options || {};
    this.log = log || { notice: console.log, warning: console.warn };
    this.hooks = {
      'before:package:createDeploymentArtifacts': () => this.prepare(this.functionNames()),
      'before:package:function:package': () => this.prepare([this.options.function]),
    };
  }

  functionNames() {
    return this.serverless.service.getAllFunctions();
  }

  prepare(names) {
    const packages = names.filter(Boolean);
    if (packages.length === 0) return;
    this.build(packages);
    for (const name of packages) this.stage(name);
  }

  build(packages) {
    if (process.env.SKIP_CARGO_LAMBDA_BUILD === '1') {
      this.log.notice('cargo lambda build skipped (SKIP_CARGO_LAMBDA_BUILD=1)');
      return;
    }
    // `-p functions` as well as each `--bin`: without it cargo resolves features over the whole
    // workspace (the tools too) and rebuilds every dependency the scripts just built.
    const args = ['lambda', 'build', '--release', '--arm64', '--output-format', 'zip', '-p', 'functions'];
    for (const name of packages) args.push('--bin', name);
    this.log.notice(`cargo ${args.join(' ')}`);
    const result = spawnSync('cargo', args, {
      cwd: this.serverless.serviceDir,
      stdio: ['ignore', 'inherit', 'inherit'],
      env: process.env,
    });
    if (result.error) {
      throw new this.serverless.classes.Error(
        `cannot run cargo lambda (${result.error.message}); run scripts/install-deps.sh, which ` +
          'installs cargo lambda into .tools/venv, and `. scripts/env.sh` to put it on PATH'
      );
    }
    if (result.status !== 0) {
      throw new this.serverless.classes.Error(
        `cargo lambda build failed (exit status ${result.status}); see its output above`
      );
    }
  }

  // Copies cargo lambda's bootstrap.zip to the function's own artifact name.
  stage(name) {
    const artifact = this.serverless.service.getFunction(name).package?.artifact;
    if (!artifact) {
      throw new this.serverless.classes.Error(`function ${name} has no package.artifact`);
    }
    const target = path.resolve(this.serverless.serviceDir, artifact);
    const built = path.join(path.dirname(target), 'bootstrap.zip');
    if (path.basename(target) === 'bootstrap.zip') {
      throw new this.serverless.classes.Error(
        `function ${name}: its artifact must not be called bootstrap.zip (every function's ` +
          'would be uploaded under the same key)'
      );
    }
    if (!fs.existsSync(built)) {
      throw new this.serverless.classes.Error(
        `${built} does not exist: build it with cargo lambda (unset SKIP_CARGO_LAMBDA_BUILD)`
      );
    }
    fs.copyFileSync(built, target);
  }
}

module.exports = CargoLambdaBuild;
