#pragma once
// Argument conversion for the bindings with errors that name the argument.
// pybind11's own conversion failure is a TypeError listing every overload
// signature, which tells a caller nothing about which argument was wrong, so
// the bindings take py::handle and convert here. Call with the GIL held.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace hyperrag::bindings {

namespace py = pybind11;

inline std::string short_repr(py::handle obj) {
  std::string r = py::repr(obj);
  return r.size() > 80 ? r.substr(0, 77) + "..." : r;
}

[[noreturn]] inline void bad_type(const std::string& field, const char* expected, py::handle obj) {
  throw py::type_error(field + " must be " + expected + ", got " + short_repr(obj) + " (" +
                       std::string(py::str(py::type::handle_of(obj).attr("__name__"))) + ")");
}

inline std::string to_string(py::handle obj, const std::string& field) {
  if (!py::isinstance<py::str>(obj)) bad_type(field, "a str", obj);
  return obj.cast<std::string>();
}

inline bool to_bool(py::handle obj, const std::string& field) {
  if (!py::isinstance<py::bool_>(obj)) bad_type(field, "True or False", obj);
  return obj.cast<bool>();
}

// Python ints and integer-like objects (numpy integers), never bool or float.
inline std::int64_t to_int64(py::handle obj, const std::string& field) {
  if (py::isinstance<py::bool_>(obj) || !PyIndex_Check(obj.ptr())) bad_type(field, "an integer", obj);
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0) {
    throw py::value_error(field + " must fit in a signed 64-bit integer (" +
                          std::to_string(std::numeric_limits<std::int64_t>::min()) + " to " +
                          std::to_string(std::numeric_limits<std::int64_t>::max()) + "), got " + short_repr(obj));
  }
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  return static_cast<std::int64_t>(v);
}

inline std::uint64_t to_uint64(py::handle obj, const std::string& field) {
  if (py::isinstance<py::bool_>(obj) || !PyIndex_Check(obj.ptr())) bad_type(field, "an integer", obj);
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();
  const unsigned long long v = PyLong_AsUnsignedLongLong(index.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(field + " must be an integer from 0 to " +
                          std::to_string(std::numeric_limits<std::uint64_t>::max()) + ", got " + short_repr(obj));
  }
  return static_cast<std::uint64_t>(v);
}

inline double to_double(py::handle obj, const std::string& field) {
  if (py::isinstance<py::bool_>(obj) || !(PyFloat_Check(obj.ptr()) || PyIndex_Check(obj.ptr()))) {
    bad_type(field, "a number", obj);
  }
  const double v = PyFloat_AsDouble(obj.ptr());
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

// A list, tuple or other sequence (never a str or bytes, whose items are characters).
inline py::sequence to_sequence(py::handle obj, const std::string& field, const char* of) {
  if (py::isinstance<py::str>(obj) || py::isinstance<py::bytes>(obj) || !PySequence_Check(obj.ptr())) {
    bad_type(field, (std::string("a list of ") + of).c_str(), obj);
  }
  return py::reinterpret_borrow<py::sequence>(obj);
}

template <class T, class Convert>
std::vector<T> to_vector(py::handle obj, const std::string& field, const char* of, Convert convert) {
  py::sequence seq = to_sequence(obj, field, of);
  std::vector<T> out;
  out.reserve(seq.size());
  for (std::size_t i = 0; i < seq.size(); ++i) out.push_back(convert(seq[i], field + "[" + std::to_string(i) + "]"));
  return out;
}

inline std::vector<std::string> to_strings(py::handle obj, const std::string& field) {
  return to_vector<std::string>(obj, field, "str", to_string);
}

inline std::vector<std::int64_t> to_int64s(py::handle obj, const std::string& field) {
  return to_vector<std::int64_t>(obj, field, "integers", to_int64);
}

inline std::vector<std::uint64_t> to_uint64s(py::handle obj, const std::string& field) {
  return to_vector<std::uint64_t>(obj, field, "integers", to_uint64);
}

inline std::vector<double> to_doubles(py::handle obj, const std::string& field) {
  return to_vector<double>(obj, field, "numbers", to_double);
}

}  // namespace hyperrag::bindings
