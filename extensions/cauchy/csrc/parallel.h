// How much work a parallel task gets, for at::parallel_for in this extension.
//
// at::parallel_for(begin, end, grain, f) runs f on the calling thread alone when end - begin <= grain, and
// otherwise wakes the OpenMP pool and hands each thread at least `grain` items. Waking the pool and joining it
// costs microseconds on a quiet machine and far more on a busy one (a thread that is not running when the
// region starts has to be scheduled first; docs/performance.md, "Under contention"). So a call whose whole
// job is smaller than kMinParallelWork element operations stays on one thread, like ATen's own elementwise
// ops (at::internal::GRAIN_SIZE, 32768), and a larger one gives every thread at least that much.
#pragma once

#include <algorithm>
#include <cstdint>

namespace ssmkit {

constexpr int64_t kMinParallelWork = 32768;

// The grain (items per thread at least) for items that each cost about `work_per_item` element operations.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, work_per_item));
}

}  // namespace ssmkit
