// Drives the local stack's endpoint with ethers (v6, from npm) as an application would:
// through the demo client's key URL, plain calls, a batch and a newHeads subscription; without
// the key, 401; a denied anvil_mine leaves every node's block number unchanged.
// Run by tools/local_stack/tests/client_library.rs with ENDPOINT (http://.../v3/<key>),
// WEBSOCKET (ws://.../ws/v3/<key>), OPEN (the proxy without a key) and NODES (the nodes'
// own URLs, comma-separated). Loopback only; it gives up after 60 s. Prints each step.
"use strict";
const assert = require("node:assert/strict");
const { JsonRpcProvider, WebSocketProvider, Network } = require("ethers");

const { ENDPOINT, WEBSOCKET, OPEN, NODES } = process.env;
const nodes = (NODES || "").split(",").filter(Boolean);
setTimeout(() => {
  console.error("ethers client: FAILED: not done after 60 s");
  process.exit(1);
}, 60_000).unref();

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, body: await response.json() };
}

async function heights() {
  return Promise.all(
    nodes.map(async (url) => {
      const { body } = await post(url, { jsonrpc: "2.0", id: 1, method: "eth_blockNumber", params: [] });
      return Number(body.result);
    }),
  );
}

async function main() {
  assert.ok(ENDPOINT && WEBSOCKET && OPEN && nodes.length > 0, "ENDPOINT, WEBSOCKET, OPEN, NODES");
  const { body: chain } = await post(nodes[0], { jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] });
  const network = Network.from(Number(chain.result));
  const options = { staticNetwork: network, batchMaxCount: 10 };

  // Plain calls, and a batch: calls made together leave ethers as one JSON-RPC batch.
  const http = new JsonRpcProvider(ENDPOINT, network, options);
  assert.equal((await http.getNetwork()).chainId, network.chainId);
  assert.equal(await http.send("eth_chainId", []), chain.result);
  const [block, balance, count] = await Promise.all([
    http.getBlockNumber(),
    http.getBalance("0x00000000000000000000000000000000000c0ffe"),
    http.getTransactionCount("0x00000000000000000000000000000000000c0ffe"),
  ]);
  assert.ok(Number.isInteger(block) && block >= 0, `block ${block}`);
  assert.equal(typeof balance, "bigint");
  assert.equal(count, 0);
  console.log(`ethers client: plain calls and an ethers batch answered (block ${block})`);
  const batch = await post(ENDPOINT, [
    { jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] },
    { jsonrpc: "2.0", id: 2, method: "eth_blockNumber", params: [] },
    { jsonrpc: "2.0", id: 3, method: "net_version", params: [] },
  ]);
  assert.equal(batch.status, 200);
  assert.deepEqual(batch.body.map((answer) => answer.id).sort(), [1, 2, 3]);
  assert.ok(batch.body.every((answer) => answer.result !== undefined), JSON.stringify(batch.body));
  console.log("ethers client: an explicit batch of 3 answered");

  // Without the key: 401 with a JSON-RPC error, and ethers refuses to go on.
  const open = await post(OPEN, { jsonrpc: "2.0", id: 7, method: "eth_blockNumber", params: [] });
  assert.equal(open.status, 401, JSON.stringify(open.body));
  assert.ok(open.body.error && typeof open.body.error.code === "number", JSON.stringify(open.body));
  const keyless = new JsonRpcProvider(OPEN, network, options);
  await assert.rejects(keyless.getBlockNumber());
  keyless.destroy();
  console.log("ethers client: without the key, 401");

  // A denied method: refused, and no node mined a block.
  const before = await heights();
  const denied = await post(ENDPOINT, { jsonrpc: "2.0", id: 9, method: "anvil_mine", params: [5] });
  assert.equal(denied.status, 200);
  assert.equal(denied.body.id, 9);
  assert.equal(denied.body.error.code, -32601, JSON.stringify(denied.body));
  await assert.rejects(http.send("anvil_mine", [5]), /method not allowed/);
  assert.deepEqual(await heights(), before, "a refused anvil_mine mined nothing");
  console.log(`ethers client: anvil_mine refused, nodes still at ${before.join(", ")}`);

  // A newHeads subscription over the key's WebSocket URL: a block mined on the nodes arrives.
  // Sockets-based providers do not batch: only the static network.
  const ws = new WebSocketProvider(WEBSOCKET, network, { staticNetwork: network });
  assert.equal(await ws.getBlockNumber(), Math.max(...before));
  await assert.rejects(ws.send("anvil_mine", [5]), /method not allowed/);
  const target = Math.max(...before) + 1;
  const head = new Promise((resolve) => {
    ws.on("block", (number) => {
      if (number >= target) resolve(number);
    });
  });
  // The subscription is in place once ethers has its id; then mine on every node directly.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  for (const url of nodes) {
    const mined = await post(url, { jsonrpc: "2.0", id: 1, method: "evm_mine", params: [] });
    assert.ok(mined.body.result !== undefined, JSON.stringify(mined.body));
  }
  const received = await head;
  console.log(`ethers client: newHeads delivered block ${received} over the WebSocket`);
  await ws.destroy();
  http.destroy();
  console.log("ethers client: all passed");
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`ethers client: FAILED: ${error && error.stack ? error.stack : error}`);
    process.exit(1);
  },
);
