-- The JSON-RPC gate of the public server: API keys, method policy, limits and usage counters,
-- for plain HTTP (access phase, before proxy_pass) and every WebSocket message (through
-- jsonrpc_gate.websocket). Configured by the rendered configuration's init_by_lua_block.
-- Rationale: docs/architecture.md, "The JSON-RPC gate".

local json = require "jsonrpc_gate.json"
local chain = require "jsonrpc_gate.chain"
local ffi = require "ffi"

local ngx = ngx
local byte, sub, find, lower, format = string.byte, string.sub, string.find, string.lower,
  string.format
local concat = table.concat

local M = {}

-- Usage names of callers that are not clients (never valid client names: those are
-- [A-Za-z0-9._-]).
M.OPEN = "(open)"
M.UNKNOWN = "(unknown)"
local SEP = "\t"

-- The usage counter `what` ("served", "cached") of `name`.
local function usage_key(name, what) return name .. SEP .. what end

-- The caller of every request in open mode (no client registered, and the deployment's
-- open_without_key set).
local function open_client(calls_per_second, concurrent_requests)
  return { name = M.OPEN, calls_per_second = calls_per_second,
    concurrent_requests = concurrent_requests, allow = {}, served_key = usage_key(M.OPEN, "served"),
    cached_key = usage_key(M.OPEN, "cached"),
    memo = {}, memo_size = 0 }
end

-- What configure read; the names of the shared dictionaries and variables come with it from
-- the rendered configuration (crates/core/src/render/gate.rs, `LuaConfig`), as every value does.
local config = {
  clients = {}, -- sha256 hex -> client
  open = false, -- open mode: every path is the open caller
  deny = {},
  max_body_bytes = 1,
  max_batch_calls = 1,
  max_get_logs_blocks = 0,
  open_client = open_client(1, 1),
}

local function lowered(list)
  local out = {}
  for i = 1, (list and list.n or 0) do out[i] = lower(list[i]) end
  return out
end

-- A set of the list's strings, or nil for an empty list (any origin).
local function set_of(list)
  if not list or list.n == 0 then return nil end
  local out = {}
  for i = 1, list.n do out[list[i]] = true end
  return out
end

-- Called from init_by_lua_block with the policy as JSON (rendered by crates/core/src/render/gate.rs).
function M.configure(text)
  local data, _, message = json.decode(text)
  if not data then error("jsonrpc_gate: bad configuration: " .. tostring(message)) end
  local clients, any = {}, false
  local list = data.clients
  for i = 1, list.n do
    local c = list[i]
    clients[lower(c.key_sha256)] = {
      name = c.name,
      calls_per_second = c.calls_per_second,
      allow = lowered(c.allow_methods),
      concurrent_requests = c.concurrent_requests,
      origins = set_of(c.allowed_origins),
      rate_id = "c" .. SEP .. c.name,
      served_key = usage_key(c.name, "served"),
      cached_key = usage_key(c.name, "cached"),
      memo = {},
      memo_size = 0,
    }
    any = true
  end
  config = {
    clients = clients,
    open_without_key = data.open_without_key == true,
    -- Only an explicit true opens the gate; no client alone leaves every caller at 401.
    open = (not any) and data.open_without_key == true,
    open_client = open_client(data.default_calls_per_second, data.default_concurrent_requests),
    deny = lowered(data.deny_methods),
    max_body_bytes = data.max_body_bytes,
    max_batch_calls = data.max_batch_calls,
    max_get_logs_blocks = data.max_get_logs_blocks,
    websocket_upstream = data.websocket_upstream,
    websocket_timeout_ms = data.websocket_timeout_secs * 1000,
    rate_dict = data.rate_dict,
    usage_dict = data.usage_dict,
    client_variable = data.client_variable,
    slot_variable = data.slot_variable,
    cors_variable = data.cors_variable,
    upstream_location = data.upstream_location,
  }
  chain.configure(data)
end

ffi.cdef [[unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);]]
local digest = ffi.new("unsigned char[32]")
local HEX = {}
for i = 0, 255 do HEX[i] = format("%02x", i) end
local function sha256_hex(s)
  ffi.C.SHA256(s, #s, digest)
  local out = {}
  for i = 0, 31 do out[i + 1] = HEX[digest[i]] end
  return concat(out)
end
M.sha256_hex = sha256_hex

---------------------------------------------------------------------------------------------
-- Answers

local function error_object(id, code, message)
  return '{"jsonrpc":"2.0","id":' .. (id or "null") .. ',"error":{"code":' .. code
    .. ',"message":' .. json.quote(message) .. "}}"
end
M.error_object = error_object

local function count(key, n)
  local usage = ngx.shared[config.usage_dict]
  if usage then usage:incr(key, n, 0) end
end

local function count_refused(name, reason, n)
  count(usage_key(name, "refused" .. SEP .. reason), n)
end

---------------------------------------------------------------------------------------------
-- Callers

local known_keys = {}

-- The client a request path names: `prefix .. key` exactly (the raw request target: no
-- normalisation, no query, no percent-encoding, nothing after the key). In open mode every
-- path is the open caller, counted per client address; with no client and open mode off, no
-- path names a client.
local function identify(request_uri, prefix)
  if config.open then
    return config.open_client, "a" .. SEP .. (ngx.var.remote_addr or "")
  end
  if sub(request_uri, 1, #prefix) ~= prefix then return nil end
  local key = sub(request_uri, #prefix + 1)
  local client = known_keys[key]
  if not client then
    if #key == 0 or #key > 128 or find(key, "[^A-Za-z0-9_-]") then return nil end
    client = config.clients[sha256_hex(key)]
    if not client then return nil end
    -- Only registered keys are remembered (a worker's configuration never changes: a reload
    -- starts new workers), so the table is as small as the client list.
    known_keys[key] = client
  end
  return client, client.rate_id
end

---------------------------------------------------------------------------------------------
-- Judging a body

local function matches(list, method)
  for i = 1, #list do
    local entry = list[i]
    if byte(entry, -1) == 95 then -- "_": a namespace prefix
      if sub(method, 1, #entry) == entry then return true end
    elseif method == entry then
      return true
    end
  end
  return false
end

-- Each client's judgements of the method names it sent, remembered up to a bound (names are
-- the caller's to choose): short names, and so many of them.
local MEMO_METHODS, MEMO_NAME_BYTES = 256, 64

local function allowed(client, method)
  local memo = client.memo
  local verdict = memo[method]
  if verdict == nil then
    local m = lower(method)
    verdict = not matches(config.deny, m) or matches(client.allow, m)
    if client.memo_size < MEMO_METHODS and #method <= MEMO_NAME_BYTES then
      memo[method] = verdict
      client.memo_size = client.memo_size + 1
    end
  end
  return verdict
end

local RANGE_METHODS = { eth_getlogs = true, eth_newfilter = true, trace_filter = true }
local MEMBERS = { "jsonrpc", "method", "params", "id" }

-- nil when the call may go to a node; else its error code and message.
local function check_call(client, call)
  if type(call) ~= "table" or call == json.null or json.is_array(call) then
    return -32600, "invalid request: a call must be an object"
  end
  local raw = json.raw_keys(call)
  for i = 1, #MEMBERS do
    local name = MEMBERS[i]
    if raw[name] ~= nil and raw[name] ~= name then
      return -32600, "invalid request: member " .. json.quote(raw[name]) .. " must be written "
        .. json.quote(name)
    end
  end
  local method = call.method
  if type(method) ~= "string" then return -32600, "invalid request: method must be a string" end
  if not allowed(client, method) then return -32601, "method not allowed: " .. method end
  if RANGE_METHODS[lower(method)] then
    local params = call.params
    local filter = type(params) == "table" and json.is_array(params) and params[1]
    if type(filter) == "table" and filter ~= json.null and not json.is_array(filter)
      and filter.blockhash == nil then
      local from, to = chain.range(filter.fromblock, filter.toblock)
      if from and to and to - from + 1 > config.max_get_logs_blocks then
        return -32005, "limit exceeded: eth_getLogs block range " .. config.max_get_logs_blocks
          .. " blocks"
      end
    end
  end
  return nil
end

local function id_of(call)
  return type(call) == "table" and json.raw_id(call) or nil
end

local REASONS = { [-32601] = "method", [-32600] = "invalid", [-32005] = "get_logs_range" }

-- Judges one JSON-RPC body for `client` (rate counted under `rate_id`).
-- Returns nil, the number of calls, the calls (decoded) and whether they came as a batch when
-- it may go on; else status, answer, reason, the number of calls.
function M.judge(client, rate_id, body)
  local value, kind, message = json.decode(body)
  if value == nil then
    if kind == "duplicate" then
      return 200, error_object(nil, -32600, "invalid request: " .. message), "duplicate", 1
    end
    return 200, error_object(nil, -32700, "parse error: " .. message), "parse", 1
  end
  local calls, batch = value, json.is_array(value)
  if not batch then calls = { value, n = 1 } end
  local n = calls.n
  if n == 0 then
    return 200, error_object(nil, -32600, "invalid request: empty batch"), "invalid", 1
  end
  if n > config.max_batch_calls then
    return 200, error_object(nil, -32005, "limit exceeded: " .. config.max_batch_calls
      .. " calls per batch"), "batch_size", n
  end
  local problems, reason = nil, nil
  for i = 1, n do
    local code, text = check_call(client, calls[i])
    if code then
      problems = problems or {}
      problems[i] = { code, text }
      if reason ~= "method" then reason = REASONS[code] end
    end
  end
  if problems then
    if not batch then
      return 200, error_object(id_of(calls[1]), problems[1][1], problems[1][2]), reason, 1
    end
    local out = {}
    for i = 1, n do
      local p = problems[i]
      if p then
        out[i] = error_object(id_of(calls[i]), p[1], p[2])
      else
        out[i] = error_object(id_of(calls[i]), -32600,
          "invalid request: the batch holds a refused call")
      end
    end
    return 200, "[" .. concat(out, ",") .. "]", reason, n
  end
  local limit = client.calls_per_second
  local rate = ngx.shared[config.rate_dict]
  local used = rate:incr(rate_id .. SEP .. ngx.time(), n, 0, 2)
  if not used or used > limit then
    local text = "limit exceeded: " .. limit .. " calls per second"
    if not batch then return 429, error_object(id_of(calls[1]), -32005, text), "rate", 1 end
    local out = {}
    for i = 1, n do out[i] = error_object(id_of(calls[i]), -32005, text) end
    return 429, "[" .. concat(out, ",") .. "]", "rate", n
  end
  return nil, n, calls, batch
end

-- nginx adds the request line (which holds the key) to every error line it writes for a
-- request, and a timer started by a request logs where that request would. So requests queue
-- their lines here, and a timer of the worker (started by init_worker, in the http-level error
-- log) writes them.
local pending, dropped = {}, 0
local function log_detached(level, message)
  if #pending < 1000 then
    pending[#pending + 1] = { level, message }
  else
    dropped = dropped + 1
  end
end

local function flush_log()
  local lines, lost = pending, dropped
  pending, dropped = {}, 0
  for i = 1, #lines do ngx.log(lines[i][1], lines[i][2]) end
  if lost > 0 then ngx.log(ngx.WARN, "jsonrpc_gate: ", lost, " log lines dropped") end
end

-- init_worker_by_lua: starts the worker's log writer, and the head tracking (one worker).
function M.init_worker()
  local ok, err = ngx.timer.every(0.5, flush_log)
  if not ok then ngx.log(ngx.ERR, "jsonrpc_gate: no log timer: ", err) end
  chain.init_worker()
end

M.log_detached = log_detached

---------------------------------------------------------------------------------------------
-- Phases

-- A batch's answer from its calls' answers (strings, or arrays of strings), as ngx.print takes
-- it.
local function batch_of(answers)
  local out = { "[" }
  for i = 1, #answers do
    if i > 1 then out[#out + 1] = "," end
    out[#out + 1] = answers[i]
  end
  out[#out + 1] = "]"
  return out
end

-- The length of `body`, a string or an array of strings (nested arrays too).
local function length(body)
  if type(body) == "string" then return #body end
  local n = 0
  for i = 1, #body do n = n + length(body[i]) end
  return n
end

-- `body`: a string, or an array of strings (nested arrays too), as ngx.print takes it. With its
-- length said, the answer goes out in one write (chunked, a long one took two).
local function respond(status, body, content_type)
  ngx.status = status
  local h = ngx.header
  h["Content-Type"] = content_type or "application/json"
  h["Content-Length"] = length(body)
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK)
end

local function unauthorized()
  count_refused(M.UNKNOWN, "key", 1)
  ngx.var[config.client_variable] = M.UNKNOWN
  return respond(401, error_object(nil, -32001, "missing or unknown API key"))
end

-- The answer to the caller's origin: nil when the client takes any origin (the answers say
-- "*"), else whether the request's Origin is one of the client's (the answers name it).
local function origin_allowed(client)
  if not client.origins then return nil end
  local origin = ngx.var.http_origin
  if origin and client.origins[origin] then
    ngx.var[config.cors_variable] = origin
    return true
  end
  return false
end

local function origin_refused(client)
  count_refused(client.name, "origin", 1)
  return respond(403, error_object(nil, -32002, "origin not allowed for this key"))
end

-- A CORS preflight of a key path: answered here, no body judged, nothing counted. Unknown keys
-- get one too, so that the page can read the 401 of its call.
local REQUEST_HEADERS = "^[%w%-_, ]*$"
local function preflight(client)
  if client and origin_allowed(client) == false then return origin_refused(client) end
  local h = ngx.header
  h["Access-Control-Allow-Methods"] = "POST, GET, OPTIONS"
  local asked = ngx.var.http_access_control_request_headers
  h["Access-Control-Allow-Headers"] = (asked and #asked <= 256 and find(asked, REQUEST_HEADERS))
    and asked or "content-type"
  h["Access-Control-Max-Age"] = "7200"
  ngx.status = 204
  return ngx.exit(204)
end

-- Takes one of the caller's in-flight places (a request, or a WebSocket connection); the log
-- phase gives it back. False when all are taken.
local function take_slot(client, rate_id)
  local rate = ngx.shared[config.rate_dict]
  local key = "n" .. SEP .. rate_id
  local used = rate:incr(key, 1, 0)
  if not used then return false end
  if used > client.concurrent_requests then
    rate:incr(key, -1, 0)
    return false
  end
  ngx.var[config.slot_variable] = key
  return true
end

local function too_many(client)
  count_refused(client.name, "concurrency", 1)
  return respond(429, error_object(nil, -32005, "limit exceeded: "
    .. client.concurrent_requests .. " requests at once"))
end

-- Whether `client` may go on: nil when it may, else the phase's answer has been given.
local function admit(client, rate_id)
  ngx.var[config.client_variable] = client.name
  if origin_allowed(client) == false then return origin_refused(client) end
  if not take_slot(client, rate_id) then return too_many(client) end
  return nil
end

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return body end
  local path = ngx.req.get_body_file()
  if not path then return "" end
  local file = io.open(path, "rb")
  if not file then return nil end
  body = file:read("*a")
  file:close()
  return body
end

-- A request the gate answered in part, or whose answers it may keep: the calls it did not
-- answer go to a node through the internal location; answers that cannot change are kept,
-- and a batch gets its answers back in its order (a call without an id, a notification,
-- gets none).
local function forward_and_keep(plan, calls, batch)
  local res = ngx.location.capture(config.upstream_location, { method = ngx.HTTP_POST,
    body = plan.forward, ctx = { chain_need = plan.need } })
  if not batch then
    if res.status == 200 and plan.keep and plan.keep[1] then chain.keep(plan.keep[1], res.body) end
    return respond(res.status, res.body, res.header["Content-Type"])
  end
  local got = res.status == 200 and chain.split_answers(res.body, calls, plan.forwarded) or {}
  if res.status ~= 200 then
    log_detached(ngx.WARN, "jsonrpc_gate: client " .. ngx.var[config.client_variable]
      .. ": the nodes answered " .. res.status .. " to a batch answered in part")
  end
  local out = {}
  for i = 1, calls.n do
    local answer = plan.answers[i] or got[i]
    local id = id_of(calls[i])
    if got[i] and plan.keep and plan.keep[i] then chain.keep(plan.keep[i], got[i]) end
    if not answer and id then
      answer = error_object(id, -32603, "internal error: no answer from the node")
    end
    out[#out + 1] = answer
  end
  return respond(200, batch_of(out))
end

-- access_by_lua of the public location: judges the request, then forwards it to "/" (the key
-- never reaches a node) or answers it.
function M.http()
  local client, rate_id = identify(ngx.var.request_uri, "/v3/")
  if ngx.req.get_method() == "OPTIONS" then return preflight(client) end
  if not client then return unauthorized() end
  local refused = admit(client, rate_id)
  if refused ~= nil then return refused end
  local body = read_body()
  if not body then
    count_refused(client.name, "body_size", 1)
    return respond(413, error_object(nil, -32005, "limit exceeded: request body "
      .. config.max_body_bytes .. " bytes"))
  end
  local status, answer, reason, n = M.judge(client, rate_id, body)
  if status then
    count_refused(client.name, reason, n)
    return respond(status, answer)
  end
  local calls, batch = reason, n
  count(client.served_key, answer)
  local plan = chain.plan(calls, batch, body)
  if plan.hits > 0 then count(client.cached_key, plan.hits) end
  if #plan.forwarded == 0 then
    if not batch then return respond(200, plan.answers[1]) end
    return respond(200, batch_of(plan.answers))
  end
  if next(plan.answers) or plan.keep then return forward_and_keep(plan, calls, batch) end
  ngx.ctx.chain_need = plan.need
  if plan.forward ~= body then ngx.req.set_body_data(plan.forward) end
  ngx.req.set_uri("/")
  -- A key path has no query (identify refuses one); only the open mode may carry one.
  if config.open then ngx.req.set_uri_args("") end
end

-- log_by_lua of the public locations: gives back the request's in-flight place, and names
-- failed or retried upstream attempts (the public server's own error lines are dropped: they
-- would hold the key).
function M.log()
  local slot = ngx.var[config.slot_variable]
  if slot and slot ~= "" then
    ngx.shared[config.rate_dict]:incr(slot, -1, 0)
    ngx.var[config.slot_variable] = ""
  end
  local status = ngx.var.upstream_status
  if status and (find(status, ",", 1, true) or find(status, "^[5-]") or find(status, ":")) then
    log_detached(ngx.WARN, "jsonrpc_gate: client " .. (ngx.var[config.client_variable] or "-")
      .. ": upstream " .. (ngx.var.upstream_addr or "-") .. " answered " .. status
      .. " (status " .. ngx.var.status .. ")")
  end
end

-- content_by_lua of the error_page for 413 (nginx refused a body over client_max_body_size).
function M.too_large()
  local client = identify(ngx.var.request_uri, "/v3/")
  local name = client and client.name or M.UNKNOWN
  ngx.var[config.client_variable] = name
  count_refused(name, "body_size", 1)
  return respond(413, error_object(nil, -32005, "limit exceeded: request body "
    .. config.max_body_bytes .. " bytes"))
end

-- content_by_lua of WebSocket upgrades: the relay (jsonrpc_gate.websocket).
function M.websocket()
  local client, rate_id = identify(ngx.var.request_uri, "/ws/v3/")
  if not client then return unauthorized() end
  local refused = admit(client, rate_id)
  if refused ~= nil then return refused end
  local relay = require "jsonrpc_gate.websocket"
  return relay.run(config.websocket_upstream, function(message)
    local status, answer, reason, n = M.judge(client, rate_id, message)
    if status then
      count_refused(client.name, reason, n)
      return answer
    end
    count(client.served_key, answer)
    return nil
  end, { max_message_bytes = config.max_body_bytes, timeout_ms = config.websocket_timeout_ms,
    lowest_head = chain.served() },
  log_detached)
end

-- content_by_lua of the internal usage endpoint: every counter, monotonic since nginx started
-- ({"clients":{"<name>":{"served":n,"cached":n,"refused":{"<reason>":n}}}}; cached calls are
-- among those served).
function M.usage()
  local usage = ngx.shared[config.usage_dict]
  local clients = {}
  local names = {}
  for _, key in ipairs(usage:get_keys(0)) do
    local name, what, reason = key:match("^([^\t]*)\t([^\t]*)\t?([^\t]*)$")
    if name then
      local entry = clients[name]
      if not entry then
        entry = { served = 0, cached = 0, refused = {} }
        clients[name] = entry
        names[#names + 1] = name
      end
      local value = usage:get(key) or 0
      if what == "served" then
        entry.served = value
      elseif what == "cached" then
        entry.cached = value
      elseif reason ~= "" then
        entry.refused[#entry.refused + 1] = json.quote(reason) .. ":" .. format("%d", value)
      end
    end
  end
  table.sort(names)
  local parts = {}
  for i, name in ipairs(names) do
    local entry = clients[name]
    table.sort(entry.refused)
    parts[i] = json.quote(name) .. ':{"served":' .. format("%d", entry.served)
      .. ',"cached":' .. format("%d", entry.cached) .. ',"refused":{'
      .. concat(entry.refused, ",") .. "}}"
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.print('{"clients":{' .. concat(parts, ",") .. "}}")
end

local function json_strings(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = json.quote(s) end
  return { raw = "[" .. concat(out, ",") .. "]" }
end

-- A JSON object of { name, value } pairs in order; a value is a number (an integer), a string,
-- a boolean, or { raw = JSON text }.
local function json_members(pairs_list)
  local out = {}
  for i, pair in ipairs(pairs_list) do
    local value = pair[2]
    if type(value) == "number" then
      value = format("%d", value)
    elseif type(value) == "string" then
      value = json.quote(value)
    elseif type(value) == "boolean" then
      value = tostring(value)
    else
      value = value.raw
    end
    out[i] = json.quote(pair[1]) .. ":" .. value
  end
  return "{" .. concat(out, ",") .. "}"
end

-- content_by_lua of the internal usage server's GET /policy: the policy as this module holds
-- it, in the shape configure reads (clients in name order, method names lowercased, origins
-- sorted): what the renderer wrote, read back (crates/core/tests/gate.rs checks the two agree).
function M.policy()
  local clients = {}
  for sha256, c in pairs(config.clients) do
    local origins = {}
    for origin in pairs(c.origins or {}) do origins[#origins + 1] = origin end
    table.sort(origins)
    clients[#clients + 1] = { c.name, json_members({
      { "name", c.name }, { "key_sha256", sha256 }, { "calls_per_second", c.calls_per_second },
      { "allow_methods", json_strings(c.allow) },
      { "concurrent_requests", c.concurrent_requests },
      { "allowed_origins", json_strings(origins) },
    }) }
  end
  table.sort(clients, function(a, b) return a[1] < b[1] end)
  local listed = {}
  for i, c in ipairs(clients) do listed[i] = c[2] end
  ngx.header["Content-Type"] = "application/json"
  ngx.print(json_members({
    { "clients", { raw = "[" .. concat(listed, ",") .. "]" } },
    { "open_without_key", config.open_without_key },
    { "default_calls_per_second", config.open_client.calls_per_second },
    { "default_concurrent_requests", config.open_client.concurrent_requests },
    { "deny_methods", json_strings(config.deny) },
    { "max_body_bytes", config.max_body_bytes },
    { "max_batch_calls", config.max_batch_calls },
    { "max_get_logs_blocks", config.max_get_logs_blocks },
    { "websocket_upstream", config.websocket_upstream },
    { "websocket_timeout_secs", config.websocket_timeout_ms / 1000 },
    { "rate_dict", config.rate_dict },
    { "usage_dict", config.usage_dict },
    { "client_variable", config.client_variable },
    { "slot_variable", config.slot_variable },
    { "cors_variable", config.cors_variable },
    unpack(chain.held()),
  }))
end

return M
