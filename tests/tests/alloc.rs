//! Per-image work on our side of the engine allocates nothing once warm:
//! preprocessing writes into the engine's input tensor and ranking reuses its
//! buffers. (tract's own intermediate tensors are its business and are
//! counted, not asserted, here.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edgevit::{default_bundle, Engine, EngineOptions, Image, TopK};
use edgevit_tests::samples;

struct Counting;

thread_local! {
    // Per thread: the other tests of this binary allocate on theirs at the
    // same time. A const Cell has no destructor, so the allocator may touch
    // it at any point of a thread's life.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: forwards every call to the system allocator unchanged; the count
// is a thread-local cell with no effect on the allocation itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations this thread made while `f` ran.
fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn preprocess_and_postprocess_allocate_nothing_per_image() {
    let bundle = default_bundle().unwrap();
    let mut engine = Engine::load(&bundle, &EngineOptions::default()).unwrap();
    let images: Vec<Image> = samples().iter().map(|p| Image::open(p).unwrap()).collect();
    let mut topk = TopK::default();
    let mut ranked = Vec::with_capacity(16);
    // Warm up: first run sizes every buffer.
    engine.set_image(images[0].view());
    let logits = engine.run().unwrap().to_vec();
    topk.rank(&logits, 5, 0.0, &mut ranked);

    let mut in_network = 0;
    for img in &images {
        assert_eq!(allocations_during(|| engine.set_image(img.view())), 0, "preprocess allocated");
        let mut logits = [0.0f32; 10];
        in_network += allocations_during(|| logits.copy_from_slice(engine.run().unwrap()));
        assert_eq!(allocations_during(|| topk.rank(&logits, 5, 0.0, &mut ranked)), 0, "top-k allocated");
    }
    eprintln!("tract allocations per image: {}", in_network / images.len());
}
