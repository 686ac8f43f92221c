-- The endpoint as one chain: one worker polls every routed node's head, safe and finalized
-- blocks; the served head (the highest block every node in sync has) only moves forward; calls
-- are pinned to it, eth_blockNumber is answered with it, and each request goes to a node that
-- has every block the endpoint named (balancer_by_lua). Answers that cannot change (the chain
-- id, what a block hash names, what a finalized block holds) are kept in a shared dictionary.
-- Rationale: docs/architecture.md, "One chain, as a client sees it".

local json = require "jsonrpc_gate.json"

local ngx = ngx
local byte, sub, lower, format, find, concat = string.byte, string.sub, string.lower,
  string.format, string.find, table.concat
local huge, max, min, floor = math.huge, math.max, math.min, math.floor

local M = {}

-- What configure read (crates/core/src/render/gate.rs, `LuaConfig`).
local config = {
  primaries = {},
  backups = {},
  dict = nil,
  poll_secs = 1,
  stale_secs = 3,
  reset_secs = 60,
  tolerance = 0,
  block_params = {},
  tries = 1,
  fail_timeout = 1,
}

local SEP = "\t"

-- A member: { address = "host:port" or "unix:/path", host, port, backup }.
local function member(m)
  local host, port = m.address, nil
  if sub(host, 1, 5) ~= "unix:" then
    host, port = m.address:match("^(.*):(%d+)$")
    port = tonumber(port)
  end
  return { address = m.address, host = host, port = port, backup = m.backup,
    head_key = "h" .. SEP .. m.address, safe_key = "s" .. SEP .. m.address,
    finalized_key = "f" .. SEP .. m.address }
end

-- Called by jsonrpc_gate.configure with the decoded configuration.
function M.configure(data)
  local primaries, backups = {}, {}
  local list = data.members
  for i = 1, list.n do
    local m = member(list[i])
    if m.backup then backups[#backups + 1] = m else primaries[#primaries + 1] = m end
  end
  config = {
    data = data,
    primaries = primaries,
    backups = backups,
    dict = data.heads_dict,
    poll_secs = data.head_poll_ms / 1000,
    stale_secs = data.head_stale_ms / 1000,
    reset_secs = data.head_reset_secs,
    tolerance = data.head_tolerance_blocks,
    block_params = data.block_params,
    tries = data.retry_tries,
    fail_timeout = data.fail_timeout_secs,
    cache = data.cache_dict,
    cache_scope = data.cache_scope,
    finality_depth = data.finality_depth,
    cache_max = data.cache_max_answer_bytes,
  }
end

---------------------------------------------------------------------------------------------
-- Block numbers

local MAX_HEX_DIGITS = 13 -- 2^52: every such number is exact in a Lua number
local MAX_DECIMAL_DIGITS = 15

-- A block number written as nodes read one ("0x..." or decimal digits, or a JSON number), or
-- nil; `2^53` for a number too large to be exact. (Byte by byte, so that LuaJIT compiles it.)
local function block_number(v)
  if type(v) == "number" then
    if v >= 0 and v == floor(v) then return v end
    return nil
  end
  if type(v) ~= "string" then return nil end
  local n = #v
  local first, second = byte(v, 1, 2)
  local base, from, most = 10, 1, MAX_DECIMAL_DIGITS
  if first == 48 and (second == 120 or second == 88) then
    base, from, most = 16, 3, MAX_HEX_DIGITS
  end
  if n < from then return nil end
  local value, digits = 0, 0
  for i = from, n do
    local c = byte(v, i)
    local d
    if c >= 48 and c <= 57 then
      d = c - 48
    elseif base == 16 and c >= 97 and c <= 102 then
      d = c - 87
    elseif base == 16 and c >= 65 and c <= 70 then
      d = c - 55
    else
      return nil
    end
    if digits > 0 or d > 0 then digits = digits + 1 end
    value = value * base + d
  end
  if digits > most then return 2 ^ 53 end
  return value
end
M.block_number = block_number

-- A block number as a JSON quantity; the last one is remembered (most are the served head).
local last_number, last_quantity
local function quantity(n)
  if n ~= last_number then last_number, last_quantity = n, format('"0x%x"', n) end
  return last_quantity
end

---------------------------------------------------------------------------------------------
-- What the data plane knows

local function dict() return config.dict and ngx.shared[config.dict] end

-- The served head, or nil while no node has been heard.
function M.served()
  local d = dict()
  return d and d:get("served")
end

-- The served head, safe and finalized blocks (each nil when unknown).
local function known()
  local d = dict()
  if not d then return nil end
  return d:get("served"), d:get("safe"), d:get("finalized")
end

local function range_end(v, is_start, served, safe, finalized)
  local unknown = is_start and 0 or huge
  if v == nil or v == json.null then return served or unknown end
  local n = block_number(v)
  if n then return n end
  if type(v) ~= "string" then return nil end
  local tag = lower(v)
  if tag == "earliest" then return 0 end
  if tag == "latest" then return served or unknown end
  if tag == "pending" then return served and served + 1 or unknown end
  if tag == "safe" then return safe or served or unknown end
  if tag == "finalized" then return finalized or served or unknown end
  return nil
end

-- The two ends of an eth_getLogs/eth_newFilter range, as blocks, for judging its width: tags
-- are resolved against what the data plane knows; an end it cannot know is `huge` (0 for the
-- start), so that such a range is refused rather than served unbounded. nil for an end that
-- is no block at all.
function M.range(from, to)
  local served, safe, finalized = known()
  return range_end(from, true, served, safe, finalized),
    range_end(to, false, served, safe, finalized)
end

---------------------------------------------------------------------------------------------
-- Pinning: which calls the data plane answers, and `latest` rewritten to the served head

local function is_latest(v)
  return v == json.null or (type(v) == "string" and lower(v) == "latest")
end

local FILTER_ENDS = { { "fromblock", "fromBlock" }, { "toblock", "toBlock" } }

-- Pins one call's `latest` (written, null or implied by a missing block parameter) to `head`
-- (nil: nothing is pinned). Returns the highest block number the call names (or 0), and the
-- edits of `body` that pin it (nil when none), each { first, last, replacement } (0-based,
-- last exclusive).
local function pin(call, method, head, body)
  local params = call.params
  local index = config.block_params[method]
  if index then
    if not json.is_array(params) then return 0 end
    if params.n > index then
      local v = params[index + 1]
      if not is_latest(v) then return block_number(v) or 0 end
      if not head then return 0 end
      local first, last = json.element(params, body, index + 1)
      return 0, { { first, last, quantity(head) } }
    end
    if params.n == index and head then
      local _, last = json.bounds(params)
      return 0, { { last - 1, last - 1, (index > 0 and "," or "") .. quantity(head) } }
    end
    return 0
  end
  if method ~= "eth_getlogs" or not json.is_array(params) then return 0 end
  local filter = params[1]
  if type(filter) ~= "table" or filter == json.null or json.is_array(filter)
    or filter.blockhash ~= nil then
    return 0
  end
  -- Missing ends are added together, as one edit at the closing brace (two edits at one
  -- offset would have no order).
  local highest, edits, spans, added = 0, nil, nil, nil
  for _, names in ipairs(FILTER_ENDS) do
    local v = filter[names[1]]
    if v ~= nil and not is_latest(v) then
      highest = max(highest, block_number(v) or 0)
    elseif head then
      spans = spans or json.spans(filter, body)
      edits = edits or {}
      if v == nil then
        local members = next(spans.starts) ~= nil or added ~= nil
        added = (added or "") .. (members and "," or "") .. '"' .. names[2] .. '":'
          .. quantity(head)
      else
        edits[#edits + 1] = { spans.starts[names[1]], spans.ends[names[1]], quantity(head) }
      end
    end
  end
  if added then edits[#edits + 1] = { spans.close, spans.close, added } end
  return highest, edits
end

-- (Not a closure where it is used: LuaJIT does not compile a function that makes one.)
local function by_offset(a, b) return a[1] < b[1] end

-- `text` from `first` to `last` (0-based, last exclusive) with `edits` (inside it) applied.
local function spliced(text, first, last, edits)
  if not edits then return sub(text, first + 1, last) end
  if #edits == 1 then
    local e = edits[1]
    return sub(text, first + 1, e[1]) .. e[3] .. sub(text, e[2] + 1, last)
  end
  table.sort(edits, by_offset)
  local out, pos = {}, first
  for _, e in ipairs(edits) do
    out[#out + 1] = sub(text, pos + 1, e[1])
    out[#out + 1] = e[3]
    pos = e[2]
  end
  out[#out + 1] = sub(text, pos + 1, last)
  return concat(out)
end

local function answered_here(call, method)
  if method ~= "eth_blocknumber" then return false end
  local params = call.params
  return params == nil or (json.is_array(params) and params.n == 0)
end

---------------------------------------------------------------------------------------------
-- The cache: answers that cannot change

-- Methods whose answer depends on the chain alone.
local CHAIN = { eth_chainid = true, net_version = true }
-- Methods of a block hash: what the hash names never changes ("block"); a transaction's block
-- may ("transaction": kept once that block is final).
local BY_HASH = {
  eth_getblockbyhash = "block",
  eth_getblocktransactioncountbyhash = "block",
  eth_gettransactionbyblockhashandindex = "block",
  eth_getunclebyblockhashandindex = "block",
  eth_getunclecountbyblockhash = "block",
  eth_gettransactionbyhash = "transaction",
  eth_gettransactionreceipt = "transaction",
}

-- The highest block the cache treats as final: the nodes' finalized block, else the served
-- head less the configured depth; nil while unknown.
local function final_block()
  local d = dict()
  if not d then return nil end
  local finalized = d:get("finalized")
  if finalized then return finalized end
  local served = d:get("served")
  if served and served >= config.finality_depth then return served - config.finality_depth end
  return nil
end

-- How a call's answer may be kept ("chain", "block", "transaction", "final", "logs"), or nil;
-- for "final", the block that must be final too.
local function cache_kind(call, method)
  if CHAIN[method] then return "chain" end
  if BY_HASH[method] then return BY_HASH[method] end
  local params = call.params
  if not json.is_array(params) then return nil end
  local index = config.block_params[method]
  if index then
    local n = params.n > index and block_number(params[index + 1])
    if n then return "final", n end
    return nil
  end
  if method == "eth_getlogs" then
    local filter = params[1]
    if type(filter) ~= "table" or filter == json.null or json.is_array(filter) then return nil end
    if filter.blockhash ~= nil then return "logs" end
    local from, to = block_number(filter.fromblock), block_number(filter.toblock)
    if from and to then return "final", to end
  end
  return nil
end

-- The cache key of a call whose answer may be kept (its parameters as sent: a call that may be
-- kept is never pinned), or nil.
local function cache_key(call, method, body)
  local params = call.params
  local text = ""
  if params ~= nil then
    if type(params) ~= "table" or params == json.null then return nil end
    local first, last = json.bounds(params)
    text = sub(body, first + 1, last)
  end
  return config.cache_scope .. SEP .. method .. SEP .. text
end

-- Each worker keeps its most used answers as Lua strings, so that a hit copies nothing out of
-- the shared dictionary: a bounded count of answers up to a bounded size.
local lrucache = require "resty.lrucache"
local WORKER_ANSWERS, WORKER_ANSWER_BYTES = 512, 16 * 1024
local worker_cache, worker_generation

-- This worker's copies, emptied when the cache was (read once per request).
local function worker_copies()
  local d = dict()
  local generation = d and d:get("generation") or 0
  if generation ~= worker_generation or not worker_cache then
    worker_cache = lrucache.new(WORKER_ANSWERS)
    worker_generation = generation
  end
  return worker_cache
end

-- The kept answer of `key` (the result's text), or nil.
local function kept(copies, cache, key)
  local held = copies:get(key)
  if held then return held end
  held = cache:get(key)
  if held and #held <= WORKER_ANSWER_BYTES then copies:set(key, held) end
  return held
end

-- Keeps a node's answer (`text`, one call's) under `key` when it is one that cannot change.
function M.keep(entry, text)
  local d = config.cache and ngx.shared[config.cache]
  if not d or #text > config.cache_max then return end
  local answer = json.decode(text)
  if type(answer) ~= "table" or answer == json.null or json.is_array(answer)
    or answer.error ~= nil then
    return
  end
  local result = answer.result
  if result == nil or result == json.null then return end
  local kind = entry.kind
  if kind == "transaction" then
    local final = final_block()
    local n = type(result) == "table" and block_number(result.blocknumber)
    if not (n and final and n <= final) then return end
  elseif kind == "logs" and not (json.is_array(result) and result.n > 0) then
    return
  end
  local spans = json.spans(answer, text)
  d:set(entry.key, sub(text, spans.starts.result + 1, spans.ends.result))
end

-- Empties the cache (a finalized block changed: a reorg no final block should see): the shared
-- dictionary, and (through the generation they watch) every worker's own copies.
local function forget_all(why)
  local d = config.cache and ngx.shared[config.cache]
  if d then
    d:flush_all()
    dict():incr("generation", 1, 0)
    ngx.log(ngx.WARN, "jsonrpc_gate: cache emptied: ", why)
  end
end

-- What to do with a judged request (`calls` decoded from `body`, a batch or one call):
-- returns { answers = { [i] = answer } of the calls answered here (the head, the cache; each
-- an array of strings, as ngx.print takes it: a kept answer is never copied into another),
-- hits = how many came from the cache, keep = { [i] = { key, kind } } of forwarded calls
-- whose answers may be kept, forward = the body to send on (nil: nothing), forwarded = the
-- indices it holds, need = the lowest head a node needs }.
function M.plan(calls, batch, body)
  local d = dict()
  -- The served head while some node has it (see advance): while none has, eth_blockNumber
  -- still names the served head, but nothing is pinned to it.
  local head = d and d:get("pin")
  local served -- read once, by the first eth_blockNumber
  local cache = config.cache and ngx.shared[config.cache]
  local final -- read once, by the first call that needs it
  local copies -- the worker's kept answers, looked up by the first call that may be kept
  local answers, forwarded, edits, keep, need = {}, {}, {}, nil, head or 0
  local hits, any_answer, any_edit = 0, false, false
  for i = 1, calls.n do
    local call = calls[i]
    local method = lower(call.method)
    local id = json.raw_id(call)
    local here = id ~= nil and answered_here(call, method)
    if here and served == nil then served = d and d:get("served") or false end
    if here and served then
      answers[i] = { '{"jsonrpc":"2.0","id":', id, ',"result":', quantity(served), "}" }
      any_answer = true
    else
      local highest, pinned = pin(call, method, head, body)
      if highest > need then need = highest end
      if pinned then
        edits[i] = pinned
        any_edit = true
      end
      local kind, block
      if cache and id ~= nil and not pinned then kind, block = cache_kind(call, method) end
      if block then
        if final == nil then final = final_block() or false end
        if not (final and block <= final) then kind = nil end
      end
      local key = kind and cache_key(call, method, body)
      if key and not copies then copies = worker_copies() end
      local held = key and kept(copies, cache, key)
      if held then
        answers[i] = { '{"jsonrpc":"2.0","id":', id, ',"result":', held, "}" }
        hits = hits + 1
        any_answer = true
      else
        if key then
          keep = keep or {}
          keep[i] = { key = key, kind = kind }
        end
        forwarded[#forwarded + 1] = i
      end
    end
  end
  local plan = { answers = answers, hits = hits, keep = keep, forwarded = forwarded,
    need = need > 0 and need or nil }
  if #forwarded == 0 then return plan end
  if not batch then
    plan.forward = any_edit and spliced(body, 0, #body, edits[1]) or body
    return plan
  end
  if not any_answer and not keep then
    if not any_edit then
      plan.forward = body
      return plan
    end
    local all = {}
    for _, list in pairs(edits) do
      for _, e in ipairs(list) do all[#all + 1] = e end
    end
    plan.forward = spliced(body, 0, #body, all)
    return plan
  end
  local parts = {}
  for k, i in ipairs(forwarded) do
    local first, last = json.bounds(calls[i])
    parts[k] = spliced(body, first, last, edits[i])
  end
  plan.forward = "[" .. concat(parts, ",") .. "]"
  return plan
end

-- The answers of a batch the node answered (`text`) for the forwarded calls: a table index ->
-- answer text (missing ones absent). Matched by id where the forwarded calls' ids are
-- distinct, else in order; a notification (no id) gets no answer.
function M.split_answers(text, calls, forwarded)
  local out = {}
  local starts, ends, ids, n = json.elements(text)
  if not starts then return out end
  local asked, distinct = {}, true
  for _, i in ipairs(forwarded) do
    local id = json.raw_id(calls[i])
    if id ~= nil then
      if asked[id] then distinct = false end
      asked[id] = true
    end
  end
  if distinct then
    local found = {}
    for j = 1, n do
      local id = ids[j]
      if id and found[id] == nil then found[id] = sub(text, starts[j] + 1, ends[j]) end
    end
    for _, i in ipairs(forwarded) do
      local id = json.raw_id(calls[i])
      if id ~= nil then out[i] = found[id] end
    end
  else
    local j = 0
    for _, i in ipairs(forwarded) do
      if json.raw_id(calls[i]) ~= nil then
        j = j + 1
        if j <= n then out[i] = sub(text, starts[j] + 1, ends[j]) end
      end
    end
  end
  return out
end

---------------------------------------------------------------------------------------------
-- Tracking heads (one worker)

local POLL = '[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]},'
  .. '{"jsonrpc":"2.0","id":2,"method":"eth_getBlockByNumber","params":["safe",false]},'
  .. '{"jsonrpc":"2.0","id":3,"method":"eth_getBlockByNumber","params":["finalized",false]}]'
local POLL_REQUEST = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
  .. "Content-Length: " .. #POLL .. "\r\nConnection: close\r\n\r\n" .. POLL
local MAX_ANSWER_BYTES = 256 * 1024

-- POSTs the poll to a member (directly, or through its internal server's socket); the body
-- of a 200 answer, or nil, why.
local function post(m, timeout_ms)
  local sock = ngx.socket.tcp()
  sock:settimeouts(timeout_ms, timeout_ms, timeout_ms)
  local ok, err
  if m.port then ok, err = sock:connect(m.host, m.port) else ok, err = sock:connect(m.host) end
  if not ok then return nil, "connect: " .. tostring(err) end
  local answer
  answer, err = (function()
    local sent, e = sock:send(POLL_REQUEST)
    if not sent then return nil, "send: " .. tostring(e) end
    local line = sock:receive("*l")
    local status = line and tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
    if status ~= 200 then return nil, "status " .. tostring(status) end
    local length, chunked
    while true do
      local header = sock:receive("*l")
      if not header then return nil, "headers" end
      if header == "" then break end
      local name, value = header:match("^([^:]+):%s*(.-)%s*$")
      name = name and lower(name)
      if name == "content-length" then length = tonumber(value) end
      if name == "transfer-encoding" and find(lower(value), "chunked", 1, true) then
        chunked = true
      end
    end
    if chunked then
      local parts, total = {}, 0
      while true do
        local size = tonumber((sock:receive("*l") or ""):match("^(%x+)"), 16)
        if not size then return nil, "chunk" end
        if size == 0 then break end
        total = total + size
        if total > MAX_ANSWER_BYTES then return nil, "too large" end
        parts[#parts + 1] = sock:receive(size)
        sock:receive(2)
      end
      return concat(parts)
    end
    if not length or length > MAX_ANSWER_BYTES then return nil, "length" end
    return sock:receive(length)
  end)()
  sock:close()
  return answer, err
end

local function result_number(answer, kind)
  if type(answer) ~= "table" or answer == json.null then return nil end
  local result = answer.result
  if kind == "block" then
    if type(result) ~= "table" or result == json.null then return nil end
    result = result.number
  end
  if type(result) ~= "string" then return nil end
  local n = block_number(result)
  return n and n < 2 ^ 53 and n or nil
end

-- head, safe, finalized of a member (the last two nil when it does not say) and the
-- finalized block's hash, or nil.
local function poll(m, timeout_ms)
  local text = post(m, timeout_ms)
  local value = text and json.decode(text)
  if not json.is_array(value) then return nil end
  local by_id = {}
  for j = 1, value.n do
    local a = value[j]
    if type(a) == "table" and not json.is_array(a) and a ~= json.null then
      by_id[json.raw_id(a) or ""] = a
    end
  end
  local head = result_number(by_id["1"], "number")
  if not head then return nil end
  local finalized = result_number(by_id["3"], "block")
  local hash = finalized and by_id["3"].result.hash
  return head, result_number(by_id["2"], "block"), finalized,
    type(hash) == "string" and hash or nil
end

-- The lowest of `key` over the members in sync, or nil.
local function lowest(d, in_sync, key)
  local low
  for _, m in ipairs(in_sync) do
    local v = d:get(m[key])
    if v then low = low and min(low, v) or v end
  end
  return low
end

-- Moves the served head (and safe, finalized) forward from what the members last said.
local function advance(d)
  local top
  local heads = {}
  for _, m in ipairs(config.primaries) do
    local h = d:get(m.head_key)
    heads[m] = h
    if h then top = top and max(top, h) or h end
  end
  if not top then return end
  local in_sync = {}
  for _, m in ipairs(config.primaries) do
    if heads[m] and heads[m] + config.tolerance >= top then in_sync[#in_sync + 1] = m end
  end
  local values = {
    served = lowest(d, in_sync, "head_key"),
    safe = lowest(d, in_sync, "safe_key"),
    finalized = lowest(d, in_sync, "finalized_key"),
  }
  -- One writer at a time: a reload briefly runs two trackers.
  if not d:add("lock", true, config.poll_secs) then return end
  local now = ngx.now()
  local served = d:get("served")
  if served and top < served then
    -- No node has the served head any more (a rollback, or a chain that was reset): it holds
    -- for reset_secs, then follows the nodes.
    -- Meanwhile nothing is pinned ("pin", what requests pin to, is the served head while some
    -- node has it).
    local since = d:get("behind_since")
    if not since then
      d:set("behind_since", now)
      d:delete("pin")
    elseif now - since >= config.reset_secs then
      ngx.log(ngx.WARN, "jsonrpc_gate: no node has reached block ", served, " for ",
        config.reset_secs, " s; the served head goes back to ", values.served)
      for name, v in pairs(values) do d:set(name, v) end
      d:delete("behind_since")
      d:set("pin", values.served)
    end
  else
    d:delete("behind_since")
    for name, v in pairs(values) do
      local held = d:get(name)
      if v and (not held or v > held) then d:set(name, v) end
    end
    d:set("pin", d:get("served"))
  end
  d:delete("lock")
end

-- A node whose finalized block went back, or changed at the same number, saw a reorg no
-- final block should: nothing the cache kept as final can be trusted.
local function check_final(d, m, finalized, hash)
  local key = "fb" .. SEP .. m.address
  local before = d:get(key)
  local n, h = (before or ""):match("^(%d+):(.*)$")
  n = tonumber(n)
  if n and (finalized < n or (finalized == n and hash and h ~= "" and hash ~= h)) then
    forget_all("the finalized block of " .. m.address .. " changed (" .. n .. " to " .. finalized
      .. ")")
  end
  d:set(key, finalized .. ":" .. (hash or ""))
end

local function track(premature)
  if premature or ngx.worker.exiting() then return end
  local d = dict()
  local timeout_ms = max(200, floor(config.poll_secs * 1000))
  local threads = {}
  for i, m in ipairs(config.primaries) do
    threads[i] = ngx.thread.spawn(function() return poll(m, timeout_ms) end)
  end
  for i, m in ipairs(config.primaries) do
    local ok, head, safe, finalized, hash = ngx.thread.wait(threads[i])
    if ok and head then
      d:set(m.head_key, head, config.stale_secs)
      if safe then d:set(m.safe_key, safe, config.stale_secs) end
      if finalized then
        d:set(m.finalized_key, finalized, config.stale_secs)
        check_final(d, m, finalized, hash)
      end
    end
  end
  advance(d)
  local ok, err = ngx.timer.at(config.poll_secs, track)
  if not ok and not ngx.worker.exiting() then
    ngx.log(ngx.ERR, "jsonrpc_gate: head tracking stopped: ", err)
  end
end

-- init_worker_by_lua: worker 0 tracks the heads.
function M.init_worker()
  if ngx.worker.id() ~= 0 or #config.primaries == 0 or not dict() then return end
  local ok, err = ngx.timer.at(0, track)
  if not ok then ngx.log(ngx.ERR, "jsonrpc_gate: no head tracking: ", err) end
end

---------------------------------------------------------------------------------------------
-- Choosing a node (balancer_by_lua of the public upstream)

local failed_until = {} -- address -> ngx.now() until which this worker skips it
local turn = 0

-- Members in the order a request tries them: in-sync primaries that have block `need`
-- (rotated), the backups, then the other primaries; members that just failed last.
local function order(need)
  local d = dict()
  local now = ngx.now()
  local first, later, failed = {}, {}, {}
  local n = #config.primaries
  turn = turn + 1
  for k = 0, n - 1 do
    local m = config.primaries[(turn + k) % n + 1]
    local head = need and d and d:get(m.head_key)
    if (failed_until[m.address] or 0) > now then
      failed[#failed + 1] = m
    elseif not need or (head and head >= need) then
      first[#first + 1] = m
    else
      later[#later + 1] = m
    end
  end
  for _, m in ipairs(config.backups) do
    if (failed_until[m.address] or 0) > now then failed[#failed + 1] = m
    else first[#first + 1] = m end
  end
  for _, m in ipairs(later) do first[#first + 1] = m end
  for _, m in ipairs(failed) do first[#first + 1] = m end
  return first
end

function M.balance()
  local balancer = require "ngx.balancer"
  local ctx = ngx.ctx
  local state = ctx.chain_balance
  if not state then
    state = { order = order(ctx.chain_need), next = 1 }
    ctx.chain_balance = state
    local more = min(config.tries, #state.order) - 1
    if more > 0 then balancer.set_more_tries(more) end
  else
    local failure = balancer.get_last_failure()
    if failure and state.current then
      failed_until[state.current] = ngx.now() + config.fail_timeout
    end
  end
  local m = state.order[state.next]
  if not m then return ngx.exit(502) end
  state.next = state.next + 1
  state.current = m.address
  local ok, err
  if m.port then ok, err = balancer.set_current_peer(m.host, m.port)
  else ok, err = balancer.set_current_peer(m.host) end
  if not ok then
    ngx.log(ngx.ERR, "jsonrpc_gate: cannot route to ", m.address, ": ", err)
    return ngx.exit(502)
  end
end

---------------------------------------------------------------------------------------------
-- Reading it back

-- The members as a JSON array, the others then the backups, each
-- {"address":a,"backup":b<more(m)>}.
local function members_json(more)
  local out = {}
  for _, list in ipairs({ config.primaries, config.backups }) do
    for _, m in ipairs(list) do
      out[#out + 1] = '{"address":' .. json.quote(m.address) .. ',"backup":'
        .. tostring(m.backup == true) .. more(m) .. "}"
    end
  end
  return "[" .. concat(out, ",") .. "]"
end

-- The chain's part of GET /policy: { name, value } pairs in LuaConfig's shape (members as
-- held: the others, then the backups).
function M.held()
  local data = config.data or {}
  local members = members_json(function() return "" end)
  local methods = {}
  for method, index in pairs(config.block_params) do
    if type(method) == "string" then
      methods[#methods + 1] = json.quote(method) .. ":" .. format("%d", index)
    end
  end
  table.sort(methods)
  return {
    { "members", { raw = members } },
    { "heads_dict", config.dict },
    { "head_poll_ms", data.head_poll_ms },
    { "head_stale_ms", data.head_stale_ms },
    { "head_reset_secs", data.head_reset_secs },
    { "head_tolerance_blocks", data.head_tolerance_blocks },
    { "block_params", { raw = "{" .. concat(methods, ",") .. "}" } },
    { "upstream_location", data.upstream_location },
    { "retry_tries", data.retry_tries },
    { "fail_timeout_secs", data.fail_timeout_secs },
    { "cache_dict", config.cache },
    { "cache_scope", config.cache_scope },
    { "finality_depth", config.finality_depth },
    { "cache_max_answer_bytes", config.cache_max },
  }
end

-- content_by_lua of the internal GET /heads: what the data plane knows of the chain
-- ({"served":n,"safe":n,"finalized":n,"members":[{"address":a,"backup":b,"head":n}]}, null
-- where unknown).
function M.report()
  local d = dict()
  local function number(v) return v and format("%d", v) or "null" end
  local members = members_json(function(m)
    return ',"head":' .. number(d and d:get(m.head_key))
  end)
  ngx.header["Content-Type"] = "application/json"
  ngx.print('{"served":' .. number(d and d:get("served")) .. ',"safe":'
    .. number(d and d:get("safe")) .. ',"finalized":' .. number(d and d:get("finalized"))
    .. ',"members":' .. members .. "}")
end

return M
