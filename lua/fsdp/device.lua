-- fsdp.device: chooses where the work runs (--device auto|cpu|cuda[:N]) and
-- loads the CUDA backend, build/libfsdp_cuda.so, when a GPU is wanted.
--
-- libfsdp never needs CUDA; the CUDA backend is a second library that links
-- it (so fsdp_last_error and the memory stats are shared) and is loaded here
-- only when asked for. Its functions are declared by the same generated cdefs
-- (the CUDA section of engine/include/fsdp.h), so nothing is hand-copied.
--
--   local device = require 'fsdp.device'
--   local dev = device.get(opts.device, local_rank, rank) -- raises a clear error
--   local dev, err = device.select('auto')    -- nil, err on failure
--
-- 'cuda' means cuda:<local_rank mod GPUs>, one GPU per rank of a node.
-- Selecting a GPU installs the backend: libfsdp's tensors accept that device
-- (fsdp_cuda_install) and fsdp.kernels dispatches ops on it there.
-- FSDP_CUDA_LIB=build/libfsdp_cuda_emu.so selects the emulated backend (our
-- kernels on the CPU, tests/cuda/emu) that the tests of this path use.
--   dev.kind ('cpu' or 'cuda'), dev.index, dev.name, dev.cuda (the library
--   namespace, nil on cpu), dev.info (fsdp_cuda_device_info), dev.why (auto:
--   why it fell back to the CPU)
local fsdp_ffi = require 'fsdp.ffi'
local ffi = fsdp_ffi.ffi

local M = {}

local cuda_lib, cuda_err -- cached outcome of the first load

local library_override

-- path of the CUDA backend: set_library's, else FSDP_CUDA_LIB, else
-- <root>/build/libfsdp_cuda.so
function M.cuda_library_path()
   return library_override or os.getenv('FSDP_CUDA_LIB') or (fsdp_ffi.root .. '/build/libfsdp_cuda.so')
end

-- loads this library instead (before the first load; the tests pick the
-- emulated backend this way)
function M.set_library(path)
   if cuda_lib then error('fsdp.device: a CUDA library is loaded already', 2) end
   library_override, cuda_err = path, nil
end

-- the emulated backend's path
function M.emulated_library_path() return fsdp_ffi.root .. '/build/libfsdp_cuda_emu.so' end

local function file_exists(path)
   local f = io.open(path, 'rb')
   if f then f:close() end
   return f ~= nil
end

-- the CUDA backend's namespace, or nil and why it cannot be had
function M.load_cuda()
   if cuda_lib or cuda_err then return cuda_lib, cuda_err end
   local path = M.cuda_library_path()
   if not file_exists(path) then
      cuda_err = path .. ' is missing: build the CUDA backend with `make cuda` (needs the CUDA toolkit)'
      return nil, cuda_err
   end
   local ok, lib = pcall(ffi.load, path)
   if not ok then
      cuda_err = 'cannot load ' .. path .. ': ' .. tostring(lib) ..
         ' (are the CUDA runtime, cuBLASLt, cuDNN and NCCL libraries installed?)'
      return nil, cuda_err
   end
   local expect, got = ffi.sizeof('fsdp_cuda_device_info'),
      tonumber(lib.fsdp_cuda_struct_size('fsdp_cuda_device_info'))
   if expect ~= got then
      cuda_err = string.format('%s: struct fsdp_cuda_device_info is %d bytes there but %d in the ' ..
                               'cdefs: rebuild (make cuda)', path, got, expect)
      return nil, cuda_err
   end
   cuda_lib = lib
   return cuda_lib
end

-- number of GPUs, or nil and the driver's reason
function M.cuda_device_count()
   local lib, err = M.load_cuda()
   if not lib then return nil, err end
   local n = ffi.new('int[1]')
   if lib.fsdp_cuda_device_count(n) ~= 0 then return nil, fsdp_ffi.last_error() end
   return n[0]
end

local function cpu_device(why)
   return {kind = 'cpu', index = -1, name = 'cpu', why = why}
end

-- parses 'auto', 'cpu', 'cuda', 'cuda:N'; returns a device table, or nil and
-- an error naming what was asked for and why it cannot be had
function M.select(want, local_rank, rank)
   want = want or 'auto'
   if want == 'cpu' then return cpu_device() end
   local kind, index = want:match('^(cuda):?(%d*)$')
   if want ~= 'auto' and not kind then
      return nil, string.format("--device %s: expected auto, cpu, cuda or cuda:N", want)
   end
   local n, err = M.cuda_device_count()
   index = tonumber(index) or ((n and n > 0) and (local_rank or 0) % n or 0)
   if n and n <= index then
      err = n == 0 and 'no GPU is visible (CUDA_VISIBLE_DEVICES?)'
         or string.format('cuda:%d asked for, but only %d GPU(s) are visible', index, n)
   end
   if err then
      if want == 'auto' then return cpu_device(err) end
      return nil, '--device ' .. want .. ': ' .. err
   end
   local lib = cuda_lib
   if lib.fsdp_cuda_set_device(index) ~= 0 then
      local e = fsdp_ffi.last_error()
      if want == 'auto' then return cpu_device(e) end
      return nil, '--device ' .. want .. ': ' .. e
   end
   local info = ffi.new('fsdp_cuda_device_info')
   if lib.fsdp_cuda_get_device_info(index, info) ~= 0 then
      return nil, '--device ' .. want .. ': ' .. fsdp_ffi.last_error()
   end
   if rank then lib.fsdp_cuda_set_rank(rank) end
   lib.fsdp_cuda_install()
   require('fsdp.kernels').install_cuda(lib, index)
   return {kind = 'cuda', index = index, name = ffi.string(info.name), cuda = lib, info = info,
           emulated = lib.fsdp_cuda_is_emulated() == 1}
end

-- like select, but raises the error (for the command line)
function M.get(want, local_rank, rank)
   local dev, err = M.select(want, local_rank, rank)
   if not dev then error('fsdp.device: ' .. err, 0) end
   return dev
end

-- one line for logs: "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs)" or
-- "cpu (no GPU: <reason>)" when auto fell back
function M.describe(dev)
   if dev.kind == 'cpu' then return dev.why and ('cpu (no GPU: ' .. dev.why .. ')') or 'cpu' end
   if dev.emulated then return string.format('cuda:%d (%s)', dev.index, dev.name) end
   return string.format('cuda:%d (%s, sm_%d%d, %d SMs)', dev.index, dev.name, dev.info.major,
                        dev.info.minor, dev.info.sm_count)
end

return M
