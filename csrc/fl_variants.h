/* Includes FL_KERN_FILE once per instruction-set variant (VAR = base, and
 * with FL_MULTI_ISA v3 = AVX2+FMA, v4 = AVX-512) and defines FL_PICK(name),
 * the variant chosen for this CPU.  Shared by fl_elementwise_impl.h and
 * fl_softmax_impl.h so both dispatch the same way. */
#define VAR base
#define FL_ATTR
#include FL_KERN_FILE
#undef VAR
#undef FL_ATTR
#ifdef FL_MULTI_ISA
#define VAR v3
#define FL_ATTR FL_ATTR_V3
#include FL_KERN_FILE
#undef VAR
#undef FL_ATTR
#define VAR v4
#define FL_ATTR FL_ATTR_V4
#include FL_KERN_FILE
#undef VAR
#undef FL_ATTR
#define FL_PICK(name) (fl_isa() >= 4 ? FL_CAT(name, v4) : fl_isa() >= 3 ? FL_CAT(name, v3) : FL_CAT(name, base))
#else
#define FL_PICK(name) FL_CAT(name, base)
#endif
