#include "clock.h"

namespace adrank {

SteadyClock* SteadyClock::Get() {
  static SteadyClock clock;
  return &clock;
}

}  // namespace adrank
