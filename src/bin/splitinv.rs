fn main() {
    println!("splitinv");
}
