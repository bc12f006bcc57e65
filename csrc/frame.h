// The value a frame stores for one coordinate (spatial.Frame.apply): (x - mean) * scale, scale a
// power of two (exact). Float32 rows into a float32 frame are shifted in float (a correctly rounded
// difference, what the tile band assumes); anything else in double, rounded once to float32 where
// the frame is float32. One definition for every C++ pass that maps rows through a frame (the
// frame gather, the panel packing, the principal coordinates), so their values agree bit for bit.
#pragma once

#include <type_traits>

namespace inform_fast {

template <typename T>
inline double frame_value(T x, T mean, double scale, bool float_frame) {
  if (std::is_same<T, float>::value && float_frame)
    return static_cast<double>(static_cast<float>((x - mean) * static_cast<T>(scale)));
  const double v = (static_cast<double>(x) - static_cast<double>(mean)) * scale;
  return float_frame ? static_cast<double>(static_cast<float>(v)) : v;
}

}  // namespace inform_fast
