'use strict';

// Local Serverless plugin: builds the functions' zips with cargo lambda before packaging, so
// that `sls package` / `sls deploy` / `sls deploy function` always ship the current code.
//
// Each function key is the name of its crate in the Cargo workspace; cargo lambda writes
// ${CARGO_TARGET_DIR:-target}/lambda/<crate>/bootstrap.zip, which is the function's
// `package.artifact` in serverless.yml. Cargo's own caching makes a rebuild of unchanged code
// take seconds. SKIP_CARGO_LAMBDA_BUILD=1 skips the build (the zips must then exist already).

const { spawnSync } = require('child_process');

class CargoLambdaBuild {
  constructor(serverless, options, { log } = {}) {
    this.serverless = serverless;
    this.options = options || {};
    this.log = log || { notice: console.log, warning: console.warn };
    this.hooks = {
      'before:package:createDeploymentArtifacts': () => this.build(this.functionNames()),
      'before:package:function:package': () => this.build([this.options.function]),
    };
  }

  functionNames() {
    return this.serverless.service.getAllFunctions();
  }

  build(names) {
    if (process.env.SKIP_CARGO_LAMBDA_BUILD === '1') {
      this.log.notice('cargo lambda build skipped (SKIP_CARGO_LAMBDA_BUILD=1)');
      return;
    }
    const packages = names.filter(Boolean);
    if (packages.length === 0) return;
    const args = ['lambda', 'build', '--release', '--arm64', '--output-format', 'zip'];
    for (const name of packages) args.push('--package', name);
    this.log.notice(`cargo ${args.join(' ')}`);
    const result = spawnSync('cargo', args, {
      cwd: this.serverless.serviceDir,
      stdio: ['ignore', 'inherit', 'inherit'],
      env: process.env,
    });
    if (result.error) {
      throw new this.serverless.classes.Error(
        `cannot run cargo lambda (${result.error.message}); install it with ` +
          '`pip install cargo-lambda` (see scripts/install-deps.sh)'
      );
    }
    if (result.status !== 0) {
      throw new this.serverless.classes.Error(
        `cargo lambda build failed (exit status ${result.status}); see its output above`
      );
    }
  }
}

module.exports = CargoLambdaBuild;
