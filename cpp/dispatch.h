// dispatch.h — picks the kernel module (_kernels_<isa>) for this CPU at run time, and holds the
// thread count. Part of lstmx._core and of lstmx_bench; no Python in it.
#pragma once

#include <string>
#include <vector>

#include "lstmx.h"

namespace lstmx {

const Backend& backend();                 // the active kernels (loaded on first use)
std::vector<std::string> isas_available();  // loadable here, best first
std::string isa_note();                   // why LSTMX_ISA was not followed, or ""
void set_isa(const std::string& name);    // throws std::invalid_argument if not available

void set_num_threads(int n);  // n >= 1
int num_threads();
bool has_openmp();

}  // namespace lstmx
