// Follows the local stack's chain with ethers (v6, from npm) as a dapp does: a JsonRpcProvider
// on the demo client's key URL, polling, with a "block" listener. Every block number it is
// given must be new and higher than the last, and the block it names must be found.
// Run by tools/local_stack/tests/one_chain.rs with ENDPOINT (http://.../v3/<key>) and SECONDS
// (how long to listen). Loopback only. Prints what it saw.
"use strict";
const assert = require("node:assert/strict");
const { JsonRpcProvider } = require("ethers");

const { ENDPOINT, SECONDS } = process.env;
const seconds = Number(SECONDS || "20");
setTimeout(() => {
  console.error("ethers blocks: FAILED: not done in time");
  process.exit(1);
}, (seconds + 30) * 1000).unref();

async function main() {
  assert.ok(ENDPOINT, "ENDPOINT");
  const provider = new JsonRpcProvider(ENDPOINT, undefined, { staticNetwork: true, batchMaxCount: 1 });
  provider.pollingInterval = 250;
  const seen = [];
  const problems = [];
  await provider.on("block", async (number) => {
    const last = seen.length ? seen[seen.length - 1] : -1;
    seen.push(number);
    if (number <= last) problems.push(`block ${number} after ${last}`);
    try {
      const block = await provider.getBlock(number);
      if (!block || block.number !== number) problems.push(`block ${number} not found`);
    } catch (error) {
      problems.push(`block ${number}: ${error.shortMessage || error.message}`);
    }
  });
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  await provider.removeAllListeners();
  provider.destroy();
  console.log(`ethers blocks: ${seen.length} blocks, ${seen[0]} to ${seen[seen.length - 1]}`);
  assert.deepEqual(problems, [], problems.join("\n"));
  assert.ok(seen.length >= seconds / 2, `too few blocks: ${seen.length}`);
  console.log("ethers blocks: all passed");
}

main().catch((error) => {
  console.error("ethers blocks: FAILED:", error);
  process.exit(1);
});
