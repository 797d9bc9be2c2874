-- fsdp.ffi: loads libfsdp.so and its cdefs, generated at build time from
-- engine/include/fsdp.h (never hand-copied), and checks that the library and
-- the cdefs agree: the ABI version and the size of every public struct.
local ffi = require 'ffi'

local M = {}

local root = FSDP_ROOT or os.getenv('FSDP_ROOT') or '.'
M.root = root

local function read_file(path)
   local f = io.open(path, 'rb')
   if not f then return nil end
   local s = f:read('*a')
   f:close()
   return s
end

local cdef_path = root .. '/build/fsdp_cdef.h'
local cdef = read_file(cdef_path)
if not cdef then
   error('fsdp: ' .. cdef_path .. ' is missing: build the project first (make)', 0)
end
ffi.cdef(cdef)

local lib_path = os.getenv('FSDP_LIB') or (root .. '/build/libfsdp.so')
local ok, C = pcall(ffi.load, lib_path)
if not ok then error('fsdp: cannot load ' .. lib_path .. ': ' .. tostring(C), 0) end

-- handshake: the cdefs came from the header the library was built with
local abi = C.fsdp_abi_version()
if abi ~= C.FSDP_ABI_VERSION then
   error(string.format('fsdp: %s has ABI version %d but the cdefs say %d: rebuild (make)',
                       lib_path, abi, C.FSDP_ABI_VERSION), 0)
end
for _, name in ipairs({'fsdp_tensor', 'fsdp_mem_stats', 'fsdp_rng', 'fsdp_st_info', 'fsdp_token_file'}) do
   local lua_size, c_size = ffi.sizeof(name), tonumber(C.fsdp_struct_size(name))
   if lua_size ~= c_size then
      error(string.format('fsdp: struct %s is %d bytes in the cdefs but %d in %s: rebuild (make)',
                          name, lua_size, c_size, lib_path), 0)
   end
end

M.C = C
M.ffi = ffi

-- last error message from the C core
function M.last_error()
   return ffi.string(C.fsdp_last_error())
end

-- raise a Lua error when a C call failed: check(C.fsdp_x(...), 'what')
function M.check(status, what)
   if status ~= 0 then
      error((what and (what .. ': ') or '') .. M.last_error(), 0)
   end
   return status
end

return M
