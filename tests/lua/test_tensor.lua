-- Tensors: dtypes, views sharing and keeping storage alive, explicit free,
-- memory statistics, casts, memory-mapped tensors, and the cdef handshake.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local ffi, C = fsdp.ffi, fsdp.C

-- every dtype allocates, fills and reads back
for _, d in ipairs({'f32', 'bf16', 'f16', 'i32', 'i64', 'u16', 'u8'}) do
   local x = fsdp.full({3, 2}, 7, d)
   t.check(x.dtype == d and x:numel() == 6 and x:get(3, 2) == 7, '%s: full/get', d)
   x:free()
end

-- a view shares storage and keeps it alive after the base is freed
do
   local base = fsdp.from_table({1, 2, 3, 4, 5, 6}, {2, 3})
   local row = base:view({3}, {1}, 3)           -- second row
   local col = base:view({2}, {3}, 1)           -- second column (strided)
   t.check(row:get(1) == 4 and col:get(2) == 5, 'views read the right elements')
   local storage = base:cdata().storage
   t.check(C.fsdp_storage_refcount(storage) == 3, 'refcount %d, want 3', C.fsdp_storage_refcount(storage))
   row:set_flat(2, 60)
   t.check(base:get(2, 3) == 60, 'a write through a view is seen by the base')
   base:free()
   t.check(col:get(2) == 5 and row:get(3) == 60, 'views outlive their freed base')
   t.raises(function() base:get(1, 1) end, 'was freed', 'using a freed tensor')
   t.check(not col:is_contiguous(), 'a column view is not contiguous')
   local c = col:clone()
   t.check(c:is_contiguous() and c:get(1) == 2 and c:get(2) == 5, 'clone of a strided view')
   row:free(); col:free(); c:free()
   t.raises(function() fsdp.zeros({4}):view({5}, {1}, 0) end, 'outside the storage', 'view out of bounds')
   t.raises(function() fsdp.zeros({4}):view({3}) end, 'has 4', 'view with the wrong element count')
   t.raises(function() fsdp.zeros({-1}) end, 'non-negative', 'negative size')
   t.raises(function() fsdp.zeros({2}, 'f64') end, "unknown dtype 'f64'", 'unknown dtype')
end

-- memory statistics: current goes up and back down, peak remembers
do
   fsdp.empty_cache()
   local before = fsdp.memory_stats()
   fsdp.reset_peak_memory()
   local x = fsdp.empty({1024, 1024}, 'f32')
   local during = fsdp.memory_stats()
   t.check(during.current - before.current >= 4 * 1024 * 1024, 'current grows by at least 4 MiB')
   x:free()
   local after = fsdp.memory_stats()
   t.check(after.current == before.current, 'current returns to %d after free, is %d', before.current, after.current)
   t.check(after.peak >= before.current + 4 * 1024 * 1024, 'peak keeps the 4 MiB')
   t.check(after.reserved >= after.current + 4 * 1024 * 1024, 'the freed block stays in the pool')
   local y = fsdp.empty({1024, 1024}, 'f32')
   local again = fsdp.memory_stats()
   t.check(again.n_misses == after.n_misses, 'a same-size allocation is served from the pool')
   y:free()
   local pooled = fsdp.memory_stats().reserved
   fsdp.empty_cache()
   t.check(fsdp.memory_stats().reserved <= pooled - 4 * 1024 * 1024, 'empty_cache releases the pooled block')
end

-- casts round to nearest even, as IEEE half and bfloat16 do
do
   local x = fsdp.from_table({1.0, 1 / 3, 65504, 70000, -2.5, 1e-8})
   local h = x:clone('f16')
   t.close(h:get_flat(1), 0.333251953125, 0, 0, 'f16(1/3)')
   t.check(h:get_flat(2) == 65504, 'f16 max')
   t.check(h:get_flat(3) == math.huge, 'f16 overflow is inf')
   t.close(h:get_flat(5), 0, 0, 6e-8, 'f16 underflow')
   local b = x:clone('bf16')
   t.close(b:get_flat(1), 0.333984375, 0, 0, 'bf16(1/3)')
   t.check(b:get_flat(4) == -2.5, 'bf16 exact')
   local back = b:clone('f32')
   t.check(back:get_flat(0) == 1 and back.dtype == 'f32', 'bf16 -> f32')
end

-- memory-mapped tensors read a file range and are read-only
do
   local path = os.tmpname()
   local f = io.open(path, 'wb')
   f:write('xxxx', ffi.string(ffi.new('float[3]', {1.5, 2.5, 3.5}), 12))
   f:close()
   local m = fsdp.mmap(path, 4, 'f32', {3})
   t.check(m:get(1) == 1.5 and m:get(3) == 3.5, 'mmap reads the range')
   t.raises(function() m:fill(0) end, 'read-only', 'writing a mapped tensor')
   t.raises(function() fsdp.mmap(path, 4, 'f32', {4}) end, {path, 'has 16'}, 'mapping past the end')
   m:free()
   os.remove(path)
end

-- the cdef handshake: struct sizes agree and unknown names say so
for _, name in ipairs({'fsdp_tensor', 'fsdp_mem_stats', 'fsdp_rng', 'fsdp_st_info', 'fsdp_token_file'}) do
   t.check(ffi.sizeof(name) == tonumber(C.fsdp_struct_size(name)), '%s size', name)
end
t.check(tonumber(C.fsdp_struct_size('no_such_struct')) == -1, 'unknown struct name gives -1')
t.check(C.fsdp_abi_version() == C.FSDP_ABI_VERSION, 'ABI version')

-- the RNG state survives a text round trip
do
   local r = fsdp.rng(5)
   C.fsdp_rng_next(r)
   local s = fsdp.rng_state(r)
   local r2 = fsdp.rng(0)
   fsdp.rng_restore(r2, s)
   t.check(C.fsdp_rng_next(r) == C.fsdp_rng_next(r2), 'restored RNG continues the same stream')
end

-- counter-based init: a slice initialized alone equals the same slice of the whole
do
   local whole, part = fsdp.empty({100}), fsdp.empty({30})
   C.fsdp_init_normal(whole:ptr(), 100, 99, 0, 0, 1)
   C.fsdp_init_normal(part:ptr(), 30, 99, 41, 0, 1)
   local same = true
   for i = 0, 29 do same = same and part:ptr()[i] == whole:ptr()[41 + i] end
   t.check(same, 'init of elements 41..70 alone matches the whole')
end

return t.done()
