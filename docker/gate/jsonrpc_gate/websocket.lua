-- The gate's WebSocket relay (docs/architecture.md, "The JSON-RPC gate"): the server
-- handshake with the client, a client handshake with the internal server that proxies
-- WebSockets to the nodes, then two light threads. Client to node: every message (fragments
-- reassembled) is judged first; allowed ones are forwarded as one masked frame, refused ones
-- answered here. Node to client: frames are copied as they come, a frame at a time, so an
-- answer of the gate never lands inside a node's message; a newHeads notification lower than
-- one the connection was already sent (or than the served head when it opened) is dropped.

local ffi = require "ffi"
local semaphore = require "ngx.semaphore"
local json = require "jsonrpc_gate.json"
local chain = require "jsonrpc_gate.chain"

local ngx = ngx
local byte, char, concat = string.byte, string.char, table.concat
local band, bor, bxor = bit.band, bit.bor, bit.bxor

local M = {}

local GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
local CHUNK = 65536
-- Largest node message read whole to be judged as a possible newHeads notification.
local NOTIFICATION_BYTES = 65536

-- The subscription and block number of a newHeads notification, or nil.
local function new_head(payload)
  if not payload:find('"eth_subscription"', 1, true) then return nil end
  local value = json.decode(payload)
  local params = type(value) == "table" and value.params
  local result = type(params) == "table" and params.result
  if type(result) ~= "table" or type(params.subscription) ~= "string"
    or type(result.number) ~= "string" or result.parenthash == nil then
    return nil
  end
  local number = result.number:sub(1, 2) == "0x" and chain.block_number(result.number)
  if not number or number >= 2 ^ 53 then return nil end
  return params.subscription, number
end

-- payload XOR the 4-byte mask (RFC 6455 5.3), through a byte buffer.
local function apply_mask(payload, mask)
  local n = #payload
  if n == 0 then return payload end
  local buf = ffi.new("uint8_t[?]", n)
  ffi.copy(buf, payload, n)
  local m0, m1, m2, m3 = byte(mask, 1, 4)
  local m = { [0] = m0, m1, m2, m3 }
  for i = 0, n - 1 do buf[i] = bxor(buf[i], m[i % 4]) end
  return ffi.string(buf, n)
end

local function length_bytes(n, mask_bit)
  if n < 126 then return char(bor(mask_bit, n)) end
  if n < 65536 then return char(bor(mask_bit, 126), math.floor(n / 256), n % 256) end
  local out = { char(bor(mask_bit, 127)) }
  for shift = 7, 0, -1 do out[#out + 1] = char(math.floor(n / 2 ^ (8 * shift)) % 256) end
  return concat(out)
end

local function frame(opcode, payload, masked)
  local head = char(bor(0x80, opcode)) .. length_bytes(#payload, masked and 0x80 or 0)
  if not masked then return head .. payload end
  local mask = char(math.random(0, 255), math.random(0, 255), math.random(0, 255),
    math.random(0, 255))
  return head .. mask .. apply_mask(payload, mask)
end

-- Reads a frame header: fin, opcode, payload length, mask (or nil), or nil, err.
local function read_header(sock)
  local head, err = sock:receive(2)
  if not head then return nil, err end
  local b1, b2 = byte(head, 1, 2)
  local n = band(b2, 0x7f)
  if n == 126 then
    local ext
    ext, err = sock:receive(2)
    if not ext then return nil, err end
    local h, l = byte(ext, 1, 2)
    n = h * 256 + l
  elseif n == 127 then
    local ext
    ext, err = sock:receive(8)
    if not ext then return nil, err end
    n = 0
    for i = 1, 8 do n = n * 256 + byte(ext, i) end
  end
  local mask
  if band(b2, 0x80) ~= 0 then
    mask, err = sock:receive(4)
    if not mask then return nil, err end
  end
  return { fin = band(b1, 0x80) ~= 0, opcode = band(b1, 0x0f), length = n, mask = mask,
    raw = head }
end

local function encode_header(h)
  return char(byte(h.raw, 1)) .. length_bytes(h.length, h.mask and 0x80 or 0) .. (h.mask or "")
end

local function bad_request(status, message)
  ngx.status = status
  ngx.header["Content-Type"] = "text/plain"
  ngx.print(message .. "\n")
  return ngx.exit(ngx.HTTP_OK)
end

-- Runs the relay for the current request. `upstream` is the internal server's address
-- ("unix:/path"), `judge(message)` returns nil to forward a message or the answer to send back,
-- `limits` = { max_message_bytes, timeout_ms, lowest_head (nil: none) }.
function M.run(upstream, judge, limits, log_detached)
  local headers = ngx.req.get_headers()
  local key = headers["sec-websocket-key"]
  if ngx.req.get_method() ~= "GET" or type(key) ~= "string"
    or headers["sec-websocket-version"] ~= "13" then
    return bad_request(400, "a WebSocket upgrade needs GET, Sec-WebSocket-Key and version 13")
  end

  local node = ngx.socket.tcp()
  node:settimeouts(limits.timeout_ms, limits.timeout_ms, limits.timeout_ms)
  local ok, err = node:connect(upstream)
  if not ok then
    log_detached(ngx.ERR, "jsonrpc_gate: WebSocket relay cannot reach " .. upstream .. ": "
      .. tostring(err))
    return bad_request(502, "no node reachable")
  end
  local nonce = {}
  for i = 1, 16 do nonce[i] = char(math.random(0, 255)) end
  local node_key = ngx.encode_base64(concat(nonce))
  node:send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    .. "Sec-WebSocket-Key: " .. node_key .. "\r\nSec-WebSocket-Version: 13\r\n\r\n")
  local read_head = node:receiveuntil("\r\n\r\n")
  local answer
  answer, err = read_head()
  if not answer or not answer:find("^HTTP/1%.1 101") then
    node:close()
    return bad_request(502, "the node refused the WebSocket upgrade")
  end

  ngx.status = 101
  ngx.header["Upgrade"] = "websocket"
  ngx.header["Sec-WebSocket-Accept"] = ngx.encode_base64(ngx.sha1_bin(key .. GUID))
  ngx.send_headers()
  ngx.flush(true)
  local client
  client, err = ngx.req.socket(true)
  if not client then
    node:close()
    log_detached(ngx.ERR, "jsonrpc_gate: no raw client socket: " .. tostring(err))
    return ngx.exit(ngx.ERROR)
  end
  client:settimeouts(limits.timeout_ms, limits.timeout_ms, limits.timeout_ms)

  -- One writer at a time on the client socket, a whole message at a time.
  local lock = semaphore.new(1)

  local floor = limits.lowest_head or 0
  local sent = {} -- subscription -> highest head sent

  local function to_client()
    local holding, fragmented = false, false
    while true do
      local h, e = read_header(node)
      if not h then return "node: " .. tostring(e) end
      if h.opcode == 1 and h.fin and not fragmented and h.length <= NOTIFICATION_BYTES then
        -- A whole text message (no other message is in flight on this side): read, judged.
        local whole = ""
        if h.length > 0 then
          whole, e = node:receive(h.length)
          if not whole then return "node: " .. tostring(e) end
        end
        local subscription, number = new_head(whole)
        local lower = subscription and number < math.max(floor, sent[subscription] or 0)
        if subscription and not lower then sent[subscription] = number end
        if not lower then
          lock:wait(limits.timeout_ms / 1000)
          local _, se = client:send(encode_header(h) .. whole)
          lock:post(1)
          if se then return "client: " .. se end
        end
      else
        if not holding then
          lock:wait(limits.timeout_ms / 1000)
          holding = true
        end
        local _, se = client:send(encode_header(h))
        if se then return "client: " .. se end
        local left = h.length
        while left > 0 do
          local piece
          piece, e = node:receive(math.min(left, CHUNK))
          if not piece then return "node: " .. tostring(e) end
          _, se = client:send(piece)
          if se then return "client: " .. se end
          left = left - #piece
        end
        -- A data message is whole at its final frame; a control frame inside a fragmented
        -- message keeps the lock until the message's end.
        if h.opcode < 8 then fragmented = not h.fin end
        if not fragmented then
          lock:post(1)
          holding = false
        end
        if h.opcode == 8 then return "closed by the node" end
      end
    end
  end

  local function to_node()
    local parts, opcode, size = {}, nil, 0
    while true do
      local h, e = read_header(client)
      if not h then return "client: " .. tostring(e) end
      if not h.mask then return "client frame not masked" end
      size = size + h.length
      if size > limits.max_message_bytes then
        -- Read what was sent of it (within reason) so that closing does not reset the
        -- connection before the client reads why.
        if h.length <= 4 * limits.max_message_bytes then client:receive(h.length) end
        lock:wait(limits.timeout_ms / 1000)
        client:send(frame(8, char(0x03, 0xF1) .. "message too big", false))
        return "message over " .. limits.max_message_bytes .. " bytes"
      end
      local payload = ""
      if h.length > 0 then
        payload, e = client:receive(h.length)
        if not payload then return "client: " .. tostring(e) end
        payload = apply_mask(payload, h.mask)
      end
      if h.opcode >= 8 then
        size = size - h.length
        local _, se = node:send(frame(h.opcode, payload, true))
        if se then return "node: " .. se end
        if h.opcode == 8 then return "closed by the client" end
      else
        if h.opcode ~= 0 then opcode = h.opcode end
        parts[#parts + 1] = payload
        if h.fin then
          local message = concat(parts)
          parts, size = {}, 0
          local refusal = judge(message)
          if refusal then
            lock:wait(limits.timeout_ms / 1000)
            local _, se = client:send(frame(1, refusal, false))
            lock:post(1)
            if se then return "client: " .. se end
          else
            local _, se = node:send(frame(opcode or 1, message, true))
            if se then return "node: " .. se end
          end
        end
      end
    end
  end

  local up = ngx.thread.spawn(to_node)
  local down = ngx.thread.spawn(to_client)
  ngx.thread.wait(up, down)
  ngx.thread.kill(up)
  ngx.thread.kill(down)
  node:close()
  return ngx.exit(ngx.OK)
end

return M
